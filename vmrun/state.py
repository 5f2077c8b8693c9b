"""A VM's run directory and its state file: what `down`, `status` and the next `up` need to know."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import cattrs

from vmrun.drift import Configuration
from vmrun.errors import UsageError
from vmrun.load import converter
from vmrun.locations import RunPaths
from vmrun.naming import is_vm_name
from vmrun.spec import Spec

if TYPE_CHECKING:
    from vmrun.changes import AppliedChange

STATE_FILE = "state.json"


@attrs.frozen
class VmState:
    """Written before the first host change and before and after each one, so that whatever instant
    vmrun dies at, `down` or the next `up` knows what to undo."""

    name: str
    spec_path: str
    argv: tuple[str, ...]  # empty: host changes made by `vmrun preflight`, no qemu
    accel: str
    accel_reason: str
    started_at: float = attrs.field(factory=time.time)
    # The journal of host changes, as AppliedChange JSON, undone in reverse by `down`.
    changes: tuple[dict[str, Any], ...] = ()
    writable_disks: tuple[str, ...] = ()
    taps: tuple[str, ...] = ()
    wants_ksm: bool = False
    spec: dict[str, Any] | None = None  # the spec it started from, for drift (vmrun diff, declarative up)
    seed_id: str | None = None  # the instance-id of its cloud-init seed

    def to_json(self) -> str:
        return json.dumps(converter.unstructure(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> VmState:
        return converter.structure(json.loads(text), cls)


def recorded_configuration(state: VmState) -> Configuration:
    """What a VM started with; its spec is None when the state predates the record or no longer structures."""
    try:
        spec = converter.structure(state.spec, Spec) if state.spec is not None else None
    except (cattrs.BaseValidationError, ValueError, TypeError):
        spec = None
    return Configuration(spec=spec, argv=state.argv, seed_id=state.seed_id)


def state_path(paths: RunPaths) -> Path:
    return paths.run_dir / STATE_FILE


def write_state(paths: RunPaths, state: VmState) -> None:
    """Atomically: a reader sees the old state or the new one, never half of it."""
    target = state_path(paths)
    temporary = target.with_name(f".{STATE_FILE}.{os.getpid()}")
    temporary.write_text(state.to_json())
    os.replace(temporary, target)


def read_state(paths: RunPaths) -> VmState | None:
    try:
        return VmState.from_json(state_path(paths).read_text())
    except (OSError, ValueError, TypeError, cattrs.BaseValidationError):
        return None


@attrs.define
class StateJournal:
    """The state file as preflight's write-ahead journal (see preflight.apply_plan)."""

    paths: RunPaths
    state: VmState

    @classmethod
    def begin(cls, paths: RunPaths, state: VmState) -> StateJournal:
        """A new run directory holding the state, before any host change is made."""
        create_run_dir(paths)
        write_state(paths, state)
        return cls(paths, state)

    def record(self, entries: tuple[AppliedChange, ...]) -> None:
        self.state = attrs.evolve(self.state, changes=tuple(entry.to_json() for entry in entries))
        write_state(self.paths, self.state)


def create_run_dir(paths: RunPaths) -> None:
    paths.run_dir.parent.mkdir(parents=True, exist_ok=True)
    paths.run_dir.mkdir(mode=0o700)
    os.chmod(paths.run_dir, 0o700)  # mkdir's mode is filtered by the umask


def remove_run_dir(paths: RunPaths) -> None:
    """Only a real directory that holds vmrun's state (or nothing yet) is removed: a run dir is a
    direct child of the run root (Places.of), and whatever else sits there is not vmrun's to delete."""
    run_dir = paths.run_dir
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory vmrun made; not removing it")
    entries = [entry.name for entry in run_dir.iterdir()]
    if entries and STATE_FILE not in entries:
        raise UsageError(f"{run_dir} holds no vmrun state ({STATE_FILE}); not removing it",
                         hint="is --run-dir pointing at the right place?")
    shutil.rmtree(run_dir)


def vm_names(run_root: Path) -> list[str]:
    """Every VM with a run directory, running or left behind. What no vmrun made is not listed: a link,
    or a name outside the VM name rule."""
    try:
        entries = list(run_root.iterdir())
    except OSError:
        return []
    return sorted(entry.name for entry in entries
                  if is_vm_name(entry.name) and not entry.is_symlink() and (entry / STATE_FILE).exists())
