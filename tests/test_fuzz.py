"""Whatever a spec file holds, vmrun answers with its own errors or a valid argv, never a crash."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmrun.check import validate
from vmrun.errors import SpecError
from vmrun.load import parse_spec
from vmrun.render import render

from .common import GOLDEN_FACTS, GOOD_SPEC, SPECS, golden_paths

toml_scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False), st.text(max_size=40),
    st.sampled_from(["", "auto", "8G", "16385K", "0s", "help", "a,b", "52:54:00:00:00:01", "01:00.0", "q35"]),
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)

BASES = [tomllib.loads(GOOD_SPEC)] + [tomllib.loads(path.read_text()) for path in sorted(SPECS.glob("*.toml"))]


def paths_in(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths_in(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths_in(child, (*prefix, index))
    return found


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    data = _copy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths_in(data)))
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(toml_values)
    return data


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_copy(child) for child in value]
    return value


def load_and_render(data: dict[str, Any]) -> None:
    try:
        spec = validate(parse_spec(data, source="fuzz", base=Path("/specs")), "fuzz")
    except SpecError as error:
        assert error.problems and all(line.startswith("fuzz: ") for line in error.lines())
        assert all("\n" not in line for line in error.lines())
        return
    argv = render(spec, GOLDEN_FACTS, golden_paths(spec.name))
    assert all(isinstance(arg, str) for arg in argv)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_mutated_specs_give_spec_errors_or_argv(data: dict[str, Any]) -> None:
    load_and_render(data)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "machine", "boot", "disks", "nics", "x"]), toml_values))
def test_random_documents_give_spec_errors_or_argv(data: dict[str, Any]) -> None:
    load_and_render(data)
