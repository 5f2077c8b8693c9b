"""A VM's state file read as plain JSON: what `status` shows (name, pid, accel, run dir, forwards, when it
started) without structuring it, so `status` imports neither attrs, cattrs nor the spec model. The file's
schema is vmstate's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vmrun.errors import UsageError
from vmrun.files import partial_of
from vmrun.spec.vmname import is_vm_name
from vmrun.state.locations import RunPaths

STATE_FILE = "state.json"
# A live migration's mark in the state, for whoever finds the run after a kill: INCOMING, the destination's
# qemu waits for a guest it never ran; OUTGOING, the source's qemu may be sending its guest; MIGRATED, the guest
# left and the source's qemu is paused for good. A mark is written before the step it names can happen, so a
# kill never leaves a run that has no mark and may have its guest elsewhere; qemu, asked, says how it ended.
INCOMING = "incoming"
OUTGOING = "outgoing"
MIGRATED = "migrated"


class DamagedState(UsageError):
    """A state file vmrun cannot read: what its VM holds on the host is unknown, so no command acts as if
    the VM had no state."""

    def __init__(self, paths: RunPaths, what: str) -> None:
        name = paths.run_dir.name
        super().__init__(
            f"{state_path(paths)} {what}: what {name} holds on the host is unknown",
            hint=f"vmrun down --force {name} stops its qemu, undoes what its journal still tells and removes it",
        )


def state_path(paths: RunPaths) -> Path:
    return paths.run_dir / STATE_FILE


def state_text(paths: RunPaths) -> str | None:
    """The state file as text; None when there is none, DamagedState when it cannot be read."""
    try:
        return state_path(paths).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedState(paths, f"cannot be read ({exc.strerror})") from exc


def glance(paths: RunPaths) -> dict[str, Any] | None:
    """The state file's fields as JSON gives them; None when there is none, DamagedState when it is not JSON
    vmrun wrote (an object naming this VM)."""
    text = state_text(paths)
    if text is None:
        return None
    try:
        fields = json.loads(text)
    except ValueError as exc:
        raise DamagedState(paths, "is not a state file vmrun wrote") from exc
    if not isinstance(fields, dict) or fields.get("name") != paths.run_dir.name:
        raise DamagedState(paths, "is not a state file vmrun wrote")
    return fields


def vm_names(run_root: Path) -> list[str]:
    """Every VM with a run directory, running or left behind (or half made or half removed by a vmrun that
    was killed). What no vmrun made is not listed: a link, or a name outside the VM name rule."""
    try:
        entries = list(run_root.iterdir())
    except OSError:
        return []
    names = set()
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            continue
        stem = entry.name.removeprefix(".").removesuffix(".partial")
        if is_vm_name(entry.name) and (entry / STATE_FILE).exists() or \
                is_vm_name(stem) and entry == partial_of(entry.with_name(stem)):
            names.add(stem)
    return sorted(names)


def has_run(paths: RunPaths) -> bool:
    """A run directory, or what a killed vmrun left of one."""
    return os.path.lexists(paths.run_dir) or partial_of(paths.run_dir).is_dir()
