"""A test-only hook to prove that vmrun can be killed at any instant and cleaned up after.

With VMRUN_TEST_KILL_AT=N in its environment, vmrun SIGKILLs itself at its Nth crash point: between
writing a journal entry and making the change, after the change, after launching qemu. Tests run `up`
with N = 1, 2, ... and check that `vmrun down --force` leaves nothing behind each time.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys

_ENV = "VMRUN_TEST_KILL_AT"
_passed = itertools.count(1)


def crash_point(label: str) -> None:
    target = os.environ.get(_ENV)
    if target and next(_passed) == int(target):
        print(f"vmrun: {_ENV}={target}: killed at {label}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
