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

from vmrun.crashpoints import crash_point
from vmrun.errors import UsageError
from vmrun.files import partial_of, write_whole
from vmrun.record import Record
from vmrun.spec.load import converter
from vmrun.spec.model import Spec
from vmrun.spec.naming import is_vm_name
from vmrun.state.drift import Configuration
from vmrun.state.locations import RunPaths

if TYPE_CHECKING:
    from vmrun.preflight.changes import AppliedChange

STATE_FILE = "state.json"
_UNREADABLE_ENTRY = (KeyError, ValueError, TypeError, AttributeError)


class DamagedState(UsageError):
    """A state file vmrun cannot read: what its VM holds on the host is unknown, so no command acts as if
    the VM had no state."""

    def __init__(self, paths: RunPaths, what: str) -> None:
        name = paths.run_dir.name
        super().__init__(
            f"{state_path(paths)} {what}: what {name} holds on the host is unknown",
            hint=f"vmrun down --force {name} stops its qemu, undoes what its journal still tells and removes it",
        )


@attrs.frozen(repr=False)
class VmState(Record):
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
    vfio: tuple[str, ...] = ()  # the PCI functions it passes
    wants_ksm: bool = False
    spec: dict[str, Any] | None = None  # the spec it started from, for drift (vmrun diff, declarative up)
    seed_id: str | None = None  # the instance-id of its cloud-init seed
    # A live migration's mark, for whoever finds this run after a kill: INCOMING, the destination's qemu
    # waits for a guest it never ran; MIGRATED, the guest left and the source's qemu is paused for good.
    migration: str | None = None

    def to_json(self) -> str:
        return json.dumps(converter.unstructure(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> VmState:
        return converter.structure(json.loads(text), cls)

    def journal(self) -> list[AppliedChange]:
        from vmrun.preflight.changes import AppliedChange  # ~3 ms that `status` pays only for a VM with a state file

        return [AppliedChange.from_json(entry) for entry in self.changes]


INCOMING = "incoming"
MIGRATED = "migrated"


def mark_migration(paths: RunPaths, mark: str | None) -> None:
    """Record where a migration stands in the VM's state (call it under the VM's lock)."""
    state = read_state(paths)
    if state is not None:
        write_state(paths, attrs.evolve(state, migration=mark))


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
    write_whole(state_path(paths), lambda partial: partial.write_text(state.to_json()))


def read_state(paths: RunPaths) -> VmState | None:
    """None only when there is no state file; one that cannot be read or parsed is DamagedState."""
    try:
        text = state_path(paths).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedState(paths, f"cannot be read ({exc.strerror})") from exc
    try:
        state = VmState.from_json(text)
        state.journal()
    except (cattrs.BaseValidationError, *_UNREADABLE_ENTRY) as exc:
        raise DamagedState(paths, "is not a state file vmrun wrote") from exc
    return state


def salvage_state(paths: RunPaths) -> tuple[VmState, bool]:
    """For `down --force` of a VM whose state is damaged: a state holding the journal entries that still
    read whole, and whether that is all of its journal."""
    recorded: list[Any] = []
    try:
        data = json.loads(state_path(paths).read_text())
        recorded = list(data["changes"])
    except (OSError, *_UNREADABLE_ENTRY):
        return VmState(paths.run_dir.name, "", (), "unknown", "damaged state"), False
    readable = tuple(entry for entry in recorded if _reads_whole(entry))
    state = VmState(paths.run_dir.name, "", (), "unknown", "damaged state", changes=readable)
    return state, len(readable) == len(recorded)


def _reads_whole(entry: Any) -> bool:
    from vmrun.preflight.changes import AppliedChange

    try:
        AppliedChange.from_json(entry)
    except _UNREADABLE_ENTRY:
        return False
    return True


@attrs.define(repr=False)
class StateJournal(Record):
    """The state file as preflight's write-ahead journal (see preflight.apply_plan)."""

    paths: RunPaths
    state: VmState

    @classmethod
    def begin(cls, paths: RunPaths, state: VmState) -> StateJournal:
        """A new run directory holding the state, before any host change is made."""
        create_run_dir(paths, state)
        return cls(paths, state)

    def record(self, entries: tuple[AppliedChange, ...]) -> None:
        self.state = attrs.evolve(self.state, changes=tuple(entry.to_json() for entry in entries))
        write_state(self.paths, self.state)


def create_run_dir(paths: RunPaths, state: VmState) -> None:
    """The run directory appears whole, its state inside: it is made under a dot name and renamed into
    place, so no kill leaves a run directory without state."""
    discard_partial_run_dir(paths)
    staging = partial_of(paths.run_dir)
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    os.chmod(staging, 0o700)  # mkdir's mode is filtered by the umask
    (staging / STATE_FILE).write_text(state.to_json())
    crash_point(f"{staging} made, not yet renamed")
    staging.rename(paths.run_dir)


def remove_run_dir(paths: RunPaths) -> None:
    """Only a real directory that holds vmrun's state is removed: a run dir is a direct child of the run
    root (Places.of), and whatever else sits there is not vmrun's to delete. It leaves in one rename
    first, so a kill leaves no run directory without state, only a dot-named remainder."""
    discard_partial_run_dir(paths)
    run_dir = paths.run_dir
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory vmrun made; not removing it")
    if not (run_dir / STATE_FILE).exists():
        raise UsageError(f"{run_dir} holds no vmrun state ({STATE_FILE}); not removing it",
                         hint="is --run-dir pointing at the right place?")
    staging = partial_of(run_dir)
    run_dir.rename(staging)
    crash_point(f"{run_dir} moved to {staging.name}, not yet deleted")
    shutil.rmtree(staging)


def _run_files(paths: RunPaths) -> set[str]:
    """What vmrun and qemu put in a run directory."""
    own = (paths.qmp_socket, paths.agent_socket, paths.console_socket, paths.console_log, paths.pidfile)
    return {STATE_FILE, partial_of(state_path(paths)).name, *(path.name for path in own)}


def discard_partial_run_dir(paths: RunPaths) -> None:
    """What a vmrun killed while making or removing this VM's run directory left: no host change is
    recorded there (it is made before the first and removed after the last). Only vmrun's own files."""
    staging = partial_of(paths.run_dir)
    if staging.is_symlink() or not staging.is_dir():
        return
    strangers = {entry.name for entry in staging.iterdir()} - _run_files(paths)
    if strangers:
        raise UsageError(f"{staging} holds files vmrun does not make ({', '.join(sorted(strangers))}); "
                         "not removing it", hint="is --run-dir pointing at the right place?")
    shutil.rmtree(staging)


def has_run(paths: RunPaths) -> bool:
    """A run directory, or what a killed vmrun left of one."""
    return os.path.lexists(paths.run_dir) or partial_of(paths.run_dir).is_dir()


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
