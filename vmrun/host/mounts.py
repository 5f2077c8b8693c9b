"""Mount tables as the kernel writes them: /proc/mounts and /proc/PID/mountinfo, parsed (no I/O here)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import attrs

from vmrun.record import Record

_ESCAPE = re.compile(r"\\([0-7]{3})")  # the kernel writes a space in a path as \040


@attrs.frozen(repr=False)
class Mount(Record):
    source: str  # a block device path, a share's tag (9p, virtiofs), a server path, or a name
    mount_point: str
    fstype: str
    device: str | None = None  # "major:minor" of the superblock (mountinfo only)


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    """/proc/mounts: source, mount point, type, options, 0, 0."""
    return [Mount(_unescape(fields[0]), _unescape(fields[1]), fields[2])
            for fields in (line.split() for line in text.splitlines()) if len(fields) > 2]


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/PID/mountinfo: id, parent, major:minor, root, mount point, options, optional fields, "-",
    then type, source and superblock options."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        separator = fields.index("-", 6) if "-" in fields[6:] else None
        if separator is None or len(fields) < separator + 3:
            continue
        fstype, source = fields[separator + 1], _unescape(fields[separator + 2])
        mounts.append(Mount(source, _unescape(fields[4]), fstype, device=fields[2]))
    return mounts


def mount_of(mounts: list[Mount], path: str) -> Mount | None:
    """The mount a path lies on: the deepest mount point above it, the last mounted where several stack."""
    target = PurePosixPath(path)
    holding = [mount for mount in mounts if target.is_relative_to(mount.mount_point)]
    return max(reversed(holding), key=lambda mount: len(PurePosixPath(mount.mount_point).parts), default=None)
