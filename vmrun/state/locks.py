"""Locks between vmrun processes, as flock(2) on files under the run root.

One lock per VM makes `up`, `down` and `preflight` of one VM take turns. One host lock guards what VMs
share on this host (which VM wants KSM, which tap belongs to whom, VFIO bindings): preflight plans and
applies under it, and `down` undoes under it, so VMs started in parallel see each other's changes.
The kernel drops a flock when its holder dies, so a killed vmrun never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vmrun.errors import UsageError
from vmrun.progress import Say
from vmrun.state.locations import Places

HOST_LOCK = "host.lock"  # not a VM name: it has a dot


def _lock_file(places: Places, name: str) -> Path:
    places.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return places.lock_dir / name


@contextmanager
def _flock(path: Path, *, block: bool) -> Iterator[bool]:
    """Yields whether the lock was taken; it always is when block is true."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def vm_lock(places: Places, name: str, *, wait: bool, say: Say) -> Iterator[None]:
    """This VM's lock. Without wait, a VM whose lock another vmrun holds is a usage error (exit 2)."""
    places.of(name)  # the name rule, before the name becomes a file name
    path = _lock_file(places, f"{name}.lock")
    with _flock(path, block=False) as taken:
        if taken:
            yield
            return
    if not wait:
        raise UsageError(f"{name} is running or starting: another vmrun is working on it",
                         hint=f"wait for it to finish, then: vmrun status {name}")
    say(f"{name}: waiting for another vmrun that is working on it")
    with _flock(path, block=True):
        yield


def vm_busy(places: Places, name: str) -> bool:
    """Whether another vmrun holds this VM's lock (it is starting, stopping or being prepared)."""
    path = places.lock_dir / f"{name}.lock"
    if not path.exists():
        return False
    try:
        with _flock(path, block=False) as taken:
            return not taken
    except OSError:  # a lock file this user cannot open belongs to root's VMs, which it cannot change
        return False


@contextmanager
def host_lock(places: Places) -> Iterator[None]:
    with _flock(_lock_file(places, HOST_LOCK), block=True):
        yield
