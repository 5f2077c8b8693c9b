"""A VM's run directory and its state file: what `down`, `status` and the next `up` need to know."""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
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
from vmrun.state.drift import Configuration
from vmrun.state.glance import STATE_FILE, DamagedState, state_path, state_text
from vmrun.state.locations import RunPaths

if TYPE_CHECKING:
    from vmrun.preflight.changes import AppliedChange

JOURNAL_FILE = "journal.log"
JOURNAL_FORMAT = 1
_UNREADABLE_ENTRY = (KeyError, ValueError, TypeError, AttributeError)


@attrs.frozen(repr=False)
class PortForward(Record):
    """A user-mode forward as the VM runs it, with the host port `up` picked for an ``auto`` one."""

    nic: str
    index: int  # in the NIC's forward list
    forward: str  # as the spec writes it: "tcp:auto:22"
    protocol: str
    address: str
    host_port: int
    guest_port: int


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
    forwards: tuple[PortForward, ...] = ()  # its user-mode port forwards, the ports picked for `auto` ones
    migration: str | None = None  # INCOMING, OUTGOING or MIGRATED (vmrun.state.glance) while a migration is under way

    def to_json(self) -> str:
        return json.dumps(converter.unstructure(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> VmState:
        return converter.structure(json.loads(text), cls)

    def journal(self) -> list[AppliedChange]:
        from vmrun.preflight.changes import AppliedChange  # ~3 ms that `status` pays only for a VM with a state file

        return [AppliedChange.from_json(entry) for entry in self.changes]




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


def write_state(paths: RunPaths, state: VmState) -> None:
    write_whole(state_path(paths), lambda partial: partial.write_text(state.to_json()))


def read_state(paths: RunPaths) -> VmState | None:
    """None only when there is no state file; one that cannot be read or parsed is DamagedState."""
    text = state_text(paths)
    if text is None:
        return None
    try:
        state = VmState.from_json(text)
        state.journal()
    except (cattrs.BaseValidationError, *_UNREADABLE_ENTRY) as exc:
        raise DamagedState(paths, "is not a state file vmrun wrote") from exc
    return state


def salvage_state(paths: RunPaths) -> tuple[VmState, bool]:
    """For `down --force` of a VM whose state file is damaged: a state holding the entries of an older
    vmrun's journal (kept in the state file) that still read whole, and whether that is all of it."""
    recorded: list[Any] = []
    try:
        recorded = list(json.loads(state_path(paths).read_text())["changes"])
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


def journal_path(paths: RunPaths) -> Path:
    return paths.run_dir / JOURNAL_FILE


class DamagedJournal(UsageError):
    """Journal lines that fail their checksum: changes were recorded there that no one can read back."""

    def __init__(self, paths: RunPaths, lost: int) -> None:
        name = paths.run_dir.name
        super().__init__(
            f"{journal_path(paths)} has {lost} damaged line(s): what {name} holds on the host is not all known",
            hint=f"vmrun down --force {name} stops its qemu, undoes what its journal still tells and names the rest",
        )


def _line(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":"), sort_keys=True)
    return f"{zlib.crc32(payload.encode()):08x} {payload}\n".encode()


def _parse_line(line: bytes) -> dict[str, Any] | None:
    checksum, _, payload = line.partition(b" ")
    try:
        if int(checksum, 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


@attrs.frozen(repr=False)
class _Replayed(Record):
    entries: dict[int, AppliedChange]
    damaged: int


def _replay(text: bytes) -> _Replayed:
    """The journal a file's lines tell. Its last line without a newline is the one a kill cut short: its
    change was never made (the line is written first), so it is dropped quietly."""
    from vmrun.preflight.changes import AppliedChange

    lines = text.split(b"\n")
    entries: dict[int, AppliedChange] = {}
    damaged = 0
    for line in lines[:-1]:
        record = _parse_line(line)
        try:
            if record is None:
                raise ValueError(line)
            if "add" in record:
                entries[int(record["add"])] = AppliedChange.from_json(record["entry"])
            elif "done" in record and int(record["done"]) in entries:
                entries[int(record["done"])] = attrs.evolve(entries[int(record["done"])], done=True)
            elif "undone" in record:
                entries.pop(int(record["undone"]), None)
        except _UNREADABLE_ENTRY:
            damaged += 1
    return _Replayed(entries, damaged)


@attrs.define(repr=False)
class StateJournal(Record):
    """The VM's write-ahead journal of host changes (see preflight.apply_plan), in a file of its own beside
    the state file, so that one damaged file cannot lose both. Append-only, one checksummed line per
    event (a change about to be made, made, undone): a kill or a torn write loses at most the line being
    written, and that line is written before its change. A VM started by an older vmrun keeps its journal
    in its state file until its first change is undone, which moves what remains here."""

    paths: RunPaths
    state: VmState
    _seqs: dict[int, AppliedChange] = attrs.field(factory=dict)
    _on_file: bool = False
    lost: int = 0  # damaged lines: changes recorded that no one can read back

    @classmethod
    def begin(cls, paths: RunPaths, state: VmState) -> StateJournal:
        """A new run directory holding the state, before any host change is made."""
        create_run_dir(paths, state)
        return cls(paths, state, on_file=True)

    @classmethod
    def open(cls, paths: RunPaths, state: VmState) -> StateJournal:
        """The journal of a run, damaged lines counted in lost (read_journal refuses them)."""
        try:
            text = journal_path(paths).read_bytes()
        except FileNotFoundError:
            return cls(paths, state, dict(enumerate(state.journal())))
        except OSError:
            return cls(paths, state, lost=1)
        replayed = _replay(text)
        return cls(paths, state, replayed.entries, on_file=True, lost=replayed.damaged)

    @property
    def entries(self) -> tuple[AppliedChange, ...]:
        return tuple(self._seqs[seq] for seq in sorted(self._seqs))

    def record(self, entries: tuple[AppliedChange, ...]) -> None:
        """The lines that turn what the file holds into entries: the journal only grows at its end, and
        entries leave it or are marked done in place."""
        lines = [] if self._on_file else [_line({"journal": JOURNAL_FORMAT})]
        held = dict(self._seqs) if self._on_file else {}
        kept: dict[int, AppliedChange] = {}
        unmatched = dict(held)
        next_seq = max(self._seqs, default=-1) + 1
        for entry in entries:
            seq = next((seq for seq, had in unmatched.items() if had.change == entry.change), None)
            if seq is None:
                seq, next_seq = next_seq, next_seq + 1
                lines.append(_line({"add": seq, "entry": entry.to_json()}))
            else:
                del unmatched[seq]
                if entry.done and not held[seq].done:
                    lines.append(_line({"done": seq}))
            kept[seq] = entry
        lines += [_line({"undone": seq}) for seq in unmatched]
        if lines:
            _append(journal_path(self.paths), b"".join(lines))
        self._seqs, self._on_file = kept, True


def _append(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _drop_torn_line(descriptor)
        os.write(descriptor, data)  # one write: a kill leaves all of it or a torn last line
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    crash_point(f"{path.name} appended")


def _drop_torn_line(descriptor: int) -> None:
    """A line a kill cut short is the change never made (see _replay); left there, it would run into the
    next line and take that one's checksum with it."""
    size = os.fstat(descriptor).st_size
    if size == 0 or os.pread(descriptor, 1, size - 1) == b"\n":
        return
    os.ftruncate(descriptor, os.pread(descriptor, size, 0).rfind(b"\n") + 1)


def read_journal(paths: RunPaths, state: VmState) -> tuple[AppliedChange, ...]:
    """What a run has changed on the host; DamagedJournal when some of it cannot be read back."""
    journal = StateJournal.open(paths, state)
    if journal.lost:
        raise DamagedJournal(paths, journal.lost)
    return journal.entries


def create_run_dir(paths: RunPaths, state: VmState) -> None:
    """The run directory appears whole, its state inside: it is made under a dot name and renamed into
    place, so no kill leaves a run directory without state."""
    discard_partial_run_dir(paths)
    staging = partial_of(paths.run_dir)
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    os.chmod(staging, 0o700)  # mkdir's mode is filtered by the umask
    (staging / STATE_FILE).write_text(state.to_json())
    (staging / JOURNAL_FILE).write_bytes(_line({"journal": JOURNAL_FORMAT}))  # its absence means an older vmrun's
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
    return {STATE_FILE, JOURNAL_FILE, partial_of(state_path(paths)).name, *(path.name for path in own)}


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
