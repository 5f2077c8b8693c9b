"""Drift: how a running VM differs from its spec now, said in spec terms (`nics[0].queues: 2 → 4`).

`up` records the spec it started from and the argv; a VM is up to date when the argv it would get now
and every part of the spec that shapes qemu or the host are the same. What has no spec path (the host
changed: another qemu, vhost-net appeared) shows as an argv difference.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from vmrun.record import Record
from vmrun.spec.model import Spec
from vmrun.units import format_duration, format_size

# Parts of a spec that change neither qemu's argv nor the host: editing them needs no restart.
# [kubevirt] is read only by `vmrun export --format kubevirt`.
_NO_RESTART = ("description", "agent.timeout", "post_boot", "kubevirt")


def _needs_restart(path: str) -> bool:
    return not any(path == part or path.startswith((f"{part}.", f"{part}[")) for part in _NO_RESTART)


def _show(value: Any, annotation: str) -> str:
    if value is None:
        return "unset"
    if attrs.has(type(value)):
        return "set"  # a whole section added or removed: its own lines would say nothing more
    if "ByteSize" in annotation:
        return format_size(value)
    if "Seconds" in annotation:
        return format_duration(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return json.dumps(value.value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, tuple):
        return json.dumps([str(item) for item in value])
    return str(value)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _compare(old: Any, new: Any, path: str, annotation: str = "") -> Iterator[str]:
    if attrs.has(type(old)) and type(old) is type(new):
        for field in attrs.fields(type(old)):
            yield from _compare(getattr(old, field.name), getattr(new, field.name), _join(path, field.name),
                                str(field.type))
    elif isinstance(old, tuple) and isinstance(new, tuple) and any(attrs.has(type(x)) for x in (*old, *new)):
        for index in range(max(len(old), len(new))):
            item = f"{path}[{index}]"
            if index >= len(old):
                yield f"{item}: added"
            elif index >= len(new):
                yield f"{item}: removed"
            else:
                yield from _compare(old[index], new[index], item)
    elif old != new:
        yield f"{path}: {_show(old, annotation)} → {_show(new, annotation)}"


def spec_differences(old: Spec, new: Spec) -> list[str]:
    return [line for line in _compare(old, new, "") if _needs_restart(line.split(":", 1)[0])]


def argv_differences(old: Sequence[str], new: Sequence[str]) -> list[str]:
    import difflib  # only when the argv differs: a VM started afresh has nothing to compare

    lines = difflib.ndiff(list(old), list(new))
    return [f"argv: {'removed' if line[0] == '-' else 'added'} {json.dumps(line[2:])}"
            for line in lines if line[:1] in ("-", "+")]


@attrs.frozen(repr=False)
class Configuration(Record):
    """What a VM runs with: its spec, qemu's argv, and the content of its cloud-init seed (whose path in
    the argv stays the same when the user-data file changes)."""

    spec: Spec | None  # None: recorded by a vmrun that kept no spec
    argv: tuple[str, ...]
    seed_id: str | None = None


def differences(recorded: Configuration, now: Configuration) -> list[str]:
    """Empty when the VM is up to date; else what differs, spec paths first."""
    lines = spec_differences(recorded.spec, now.spec) if recorded.spec is not None and now.spec is not None else []
    if recorded.seed_id != now.seed_id:
        lines.append(f"cloud_init: the seed's files changed (instance-id {recorded.seed_id} → {now.seed_id})")
    if not lines and recorded.argv != now.argv:
        lines = argv_differences(recorded.argv, now.argv)
    return lines
