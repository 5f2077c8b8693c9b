"""A test-only hook to prove that vmrun can be stopped at any instant and cleaned up after.

vmrun passes a crash point before and after each host change, each file it writes and each step of
stopping a VM. Tests start vmrun as `python -X vmrun-crash-points -m vmrun.cli.main ...` with

    VMRUN_TEST_KILL_AT=TARGET[,TARGET...]   a number N (the Nth crash point passed) or a text that the
                                            label of a crash point contains ("after ip tuntap add")
    VMRUN_TEST_KILL_SIGNAL=KILL|TERM|INT    what vmrun sends itself there (default KILL)

Targets fire in order, each once. The environment alone does nothing: the installed `vmrun` command
never passes the -X option, so a variable left exported in a shell cannot stop a user's run.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading

ARMED_BY = "vmrun-crash-points"  # python -X vmrun-crash-points
TARGETS = "VMRUN_TEST_KILL_AT"
SIGNAL = "VMRUN_TEST_KILL_SIGNAL"

_passed = itertools.count(1)
_fired = 0
_lock = threading.Lock()


def _targets() -> list[str]:
    if ARMED_BY not in sys._xoptions:
        return []
    return [target for target in os.environ.get(TARGETS, "").split(",") if target]


def _hits(target: str, number: int, label: str) -> bool:
    return number == int(target) if target.isdigit() else target in label


def crash_point(label: str) -> None:
    global _fired
    targets = _targets()
    if not targets:
        return
    with _lock:
        number = next(_passed)
        if _fired >= len(targets) or not _hits(targets[_fired], number, label):
            return
        _fired += 1
    name = os.environ.get(SIGNAL, "KILL")
    print(f"vmrun: {TARGETS}: SIG{name} at crash point {number}: {label}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.Signals[f"SIG{name}"])
