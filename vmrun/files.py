"""Files vmrun writes are whole or absent: written beside their place under a dot name, then renamed.

Whatever instant vmrun dies at, a reader finds the old file or the new one. What a kill can leave is
the partial file, which the next write replaces and `down` removes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from vmrun.crashpoints import crash_point


def partial_of(target: Path) -> Path:
    """Where target is made before it is renamed into place: a dot name, so never a VM name."""
    return target.with_name(f".{target.name}.partial")


def write_whole(target: Path, write: Callable[[Path], object]) -> None:
    """write(path) makes the file at path; target then appears in one rename."""
    partial = partial_of(target)
    try:
        write(partial)
        crash_point(f"{partial} written, not yet renamed")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def open_to_read(path: str | Path, *, dir_fd: int | None = None, follow_links: bool = True) -> BinaryIO:
    """path opened for reading without waiting on a FIFO for its writer, which open() would do for good: the
    caller then refuses what fstat says is no regular file. Without follow_links, a link there fails (ELOOP)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    descriptor = os.open(path, flags, dir_fd=dir_fd)
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")
