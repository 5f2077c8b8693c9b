"""The disk files a VM's guest left on this host by moving away with `migrate --copy-storage`, recorded in the
VM's state dir (which outlives its runs) with what identifies each file: moving the VM back with
--copy-storage may replace such a file, and nothing else that is at its path (a disk the guest ran on since,
or a file someone put there)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import attrs

from vmrun.files import write_whole
from vmrun.host.system import Host
from vmrun.record import Record
from vmrun.state.locations import RunPaths

LEFT_DISKS_FILE = "left-disks.json"


@attrs.frozen(repr=False)
class LeftDisk(Record):
    """A file as the guest left it: a write since, or another file at the path, changes one of these."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def at(cls, host: Host, path: str) -> LeftDisk | None:
        info = host.file_info(path)
        return None if info is None else cls(path=path, device=info.st_dev, inode=info.st_ino, size=info.st_size,
                                             mtime_ns=info.st_mtime_ns)


def record_left(host: Host, paths: RunPaths, disk_paths: Iterable[str]) -> None:
    """Once the guest runs on the copies elsewhere: these files here are what it left."""
    paths.make_state_dir()
    _write(paths, [disk for path in disk_paths if (disk := LeftDisk.at(host, path)) is not None])


def left_disks(paths: RunPaths) -> list[LeftDisk]:
    """What was recorded; nothing when no record reads whole (then no file may be replaced)."""
    try:
        entries = json.loads((paths.state_dir / LEFT_DISKS_FILE).read_text())
        return [LeftDisk(**entry) for entry in entries]
    except (OSError, ValueError, TypeError):
        return []


def is_left(host: Host, paths: RunPaths, path: str) -> bool:
    """Whether the file at path is, unchanged, one the guest left by moving away."""
    return (found := LeftDisk.at(host, path)) is not None and found in left_disks(paths)


def forget_left(paths: RunPaths, disk_paths: Iterable[str]) -> None:
    """These paths hold the guest's disks again (moved back): their record goes."""
    gone = set(disk_paths)
    if kept := [disk for disk in left_disks(paths) if disk.path not in gone]:
        _write(paths, kept)
    else:
        (paths.state_dir / LEFT_DISKS_FILE).unlink(missing_ok=True)


def _write(paths: RunPaths, disks: list[LeftDisk]) -> None:
    text = json.dumps([attrs.asdict(disk) for disk in disks], indent=1) + "\n"
    write_whole(paths.state_dir / LEFT_DISKS_FILE, lambda partial: partial.write_text(text))
