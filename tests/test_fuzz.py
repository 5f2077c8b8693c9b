"""Whatever a spec file holds, vmrun answers with its own errors or a valid argv, never a crash.

CI runs a sample; `make fuzz` sets VMRUN_FUZZ_EXAMPLES and runs thousands of documents per test.
"""

from __future__ import annotations

import io
import math
import os
import tomllib
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmrun.cli.main import main
from vmrun.errors import SpecError
from vmrun.qemu.render import render
from vmrun.spec.check import validate
from vmrun.spec.load import parse_spec

from .common import GOLDEN_FACTS, GOOD_SPEC, SPECS, golden_paths
from .fakehost import FakePci, build_host_tree
from .specgen import Files, valid_specs

# `make fuzz` sets this; a test's own figure is the CI sample.
FUZZ_EXAMPLES = int(os.environ.get("VMRUN_FUZZ_EXAMPLES", "0"))


def examples(ci: int) -> int:
    return FUZZ_EXAMPLES or ci


toml_scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(), st.text(max_size=40),
    st.sampled_from([
        "", "auto", "8G", "16385K", "0s", "help", "a,b", "52:54:00:00:00:01", "01:00.0", "q35", "host",
        "25h", "1e5s", "99999999999999999999T", "-1M", "pflash0", "a" * 27, math.nan, math.inf, 0, -1, 255,
        256, 288, 289, 512, 2**31, 2**63 - 1,
    ]),
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)

BASES = [tomllib.loads(GOOD_SPEC)] + [tomllib.loads(path.read_text()) for path in sorted(SPECS.glob("*.toml"))]
# Paths the valid specs point at; the fuzz never opens them (preflight reads them under the fake root).
FUZZ_FILES = Files(
    raw_images=(Path("/images/a.raw"), Path("/images/b, c.raw")),
    qcow2_images=(Path("/images/d.qcow2"), Path("rel/e.qcow2")),
    share_dirs=(Path("/srv/data"), Path("/srv/a,b c")),
    kernel=Path("/images/vmlinuz"),
    initrd=Path("/images/initrd.gz"),
    vhost_net=True,
)


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
def mutated(draw: st.DrawFn, bases: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    data = _copy(draw(bases))
    for _ in range(draw(st.integers(1, 4))):
        paths = paths_in(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(toml_values)
    return data


def mutated_specs() -> st.SearchStrategy[dict[str, Any]]:
    return mutated(st.sampled_from(BASES))


def random_documents() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(["name", "machine", "boot", "disks", "nics", "x"]), toml_values)


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


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_mutated_specs_give_spec_errors_or_argv(data: dict[str, Any]) -> None:
    load_and_render(data)


@settings(max_examples=examples(200), deadline=None)
@given(random_documents())
def test_random_documents_give_spec_errors_or_argv(data: dict[str, Any]) -> None:
    load_and_render(data)


# --- the command line, in-process: validate, render, export and preflight on a fake host ---------------


class Cli:
    """vmrun's main() on a fake host tree, with private run and state directories."""

    def __init__(self, base: Path) -> None:
        self.host_root = build_host_tree(base / "host", [
            FakePci("0000:00:01.0", group="1", driver="pcieport", device_class="0x060400"),
            FakePci("0000:01:00.0", group="1", behind="0000:00:01.0"),
            FakePci("0000:03:00.0", group="2", driver="vfio-pci"),
        ])
        self.options = ["--host-root", str(self.host_root), "--run-dir", str(base / "run"),
                        "--state-dir", str(base / "state")]
        self.spec = base / "specs" / "fuzz.toml"
        self.spec.parent.mkdir()

    def __call__(self, *args: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([*self.options, *args])
        return code, err.getvalue()

    def write(self, data: dict[str, Any]) -> Path:
        self.spec.write_text(tomli_w.dumps(data))
        return self.spec


COMMANDS = (
    ("render",), ("export", "--format", "libvirt"), ("export", "--format", "systemd"), ("preflight", "--dry-run"),
)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    yield Cli(tmp_path_factory.mktemp("cli-fuzz"))


def documents() -> st.SearchStrategy[dict[str, Any]]:
    valid = valid_specs(FUZZ_FILES)
    return st.one_of(valid, mutated(valid), mutated_specs(), random_documents())


def without_qemu_binary(data: dict[str, Any]) -> dict[str, Any]:
    """The fuzz keeps qemu.binary at its default: render and preflight probe the binary a spec names."""
    if isinstance(data.get("qemu"), dict):
        data["qemu"].pop("binary", None)
    return data


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=documents().map(without_qemu_binary))
def test_cli_answers_every_document_with_0_2_or_3(cli: Cli, data: dict[str, Any]) -> None:
    spec = str(cli.write(data))
    validated, stderr = cli("validate", spec)
    assert validated in (0, 2), f"vmrun validate: exit {validated}: {stderr}"
    # Every command validates first, as validate does: for an invalid spec one of them shows it.
    for command in COMMANDS if validated == 0 else COMMANDS[:1]:
        code, stderr = cli(command[0], spec, *command[1:])
        allowed = {2} if validated else {0, 3} if command[0] == "preflight" else {0}
        assert code in allowed, f"vmrun {' '.join(command)}: exit {code} (validate: {validated}): {stderr}"
