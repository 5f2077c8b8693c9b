"""Signals during host changes: SIGTERM aborts like Ctrl-C, and nothing interrupts a rollback."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_STOPPING = {signal.SIGINT, signal.SIGTERM}


def _as_sigint(signum: int, frame: FrameType | None) -> None:
    # Whoever handles SIGINT now handles this too: by default that raises KeyboardInterrupt, and inside
    # an asyncio runner (QMP, the guest agent) it cancels the running task cleanly first.
    signal.raise_signal(signal.SIGINT)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (systemd stopping a unit, kill) raises KeyboardInterrupt, so `up` rolls back as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals; it interrupts the work itself
        return
    previous = signal.signal(signal.SIGTERM, _as_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def shielded() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends: a second Ctrl-C must not cut a rollback short.
    Worker threads leave them to the main thread (see for_workers), so blocking them here holds for the
    whole process."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def for_workers() -> None:
    """Run at the start of each worker thread: a signal a worker took would still raise in the main thread,
    even inside the main thread's shielded(); blocked in the workers, SIGINT and SIGTERM reach the main
    thread alone, and wait while it shields."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
