"""Whether qemu's user can reach a path: a decision taken from what the host layer reads."""

from __future__ import annotations

import stat
from pathlib import Path

from vmrun.host.system import Host, User


def blocked_for(host: Host, user: User | None, path: Path, *, write: bool) -> str | None:
    """The first component of path that user cannot traverse (or read, or write at the end: a directory or a file);
    user None is one still to be created, who owns nothing and is in no group."""
    if user is not None and user.uid == 0:
        return None
    gids = host.group_ids(user) if user else frozenset()
    for component in [*reversed(path.parents), path]:
        info = host.path(component).stat()
        owner = user is not None and info.st_uid == user.uid
        shift = 6 if owner else 3 if info.st_gid in gids else 0
        allowed = (info.st_mode >> shift) & 7
        # A directory at the end must be listed too; a file only read (or written).
        readable = 5 if stat.S_ISDIR(info.st_mode) else 4
        needed = (readable | (2 if write else 0)) if component == path else 1
        if allowed & needed != needed:
            return f"{component} (mode {oct(info.st_mode & 0o777)})"
    return None


def untrusted_reason(host: Host, program: Path, *, owners: frozenset[int]) -> str | None:
    """Why running program (a resolved path) could run code someone other than owners put there: the
    program, or a directory above it, is another's or writable by its group or by others (as OpenSSH's
    safe_path judges it). The nearest offender is named; None when owners alone control every step."""
    for component in [program, *program.parents]:
        info = host.file_info(component)
        if info is None:
            return f"{component} cannot be examined"
        mode = f"mode {info.st_mode & 0o7777:04o}"
        if info.st_uid not in owners:
            return f"{component} is owned by uid {info.st_uid}"
        if info.st_mode & 0o002:
            return f"{component} is writable by others ({mode})"
        if info.st_mode & 0o020:
            return f"{component} is writable by its group ({mode})"
    return None
