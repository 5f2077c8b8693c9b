"""Whether qemu's user can reach a path: a decision taken from what the host layer reads."""

from __future__ import annotations

import stat
from pathlib import Path

from vmrun.host import Host, User


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
