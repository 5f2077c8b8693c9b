"""The test-only crash points: armed by an interpreter option the installed `vmrun` never passes, so
an exported VMRUN_TEST_KILL_AT cannot stop a user's run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from .common import REPO

POINTS = """\
from vmrun.crashpoints import crash_point
for label in ("one", "two", "three"):
    try:
        crash_point(label)
    except KeyboardInterrupt:
        print("interrupted at", label)
    print(label, flush=True)
"""
ARMED = ("-X", "vmrun-crash-points")


def run(*options: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *options, "-c", POINTS], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=30)


def test_the_environment_alone_stops_nothing() -> None:
    result = run(VMRUN_TEST_KILL_AT="1")
    assert (result.returncode, result.stdout, result.stderr) == (0, "one\ntwo\nthree\n", "")


def test_armed_vmrun_kills_itself_at_the_point_numbered_or_named() -> None:
    by_number = run(*ARMED, VMRUN_TEST_KILL_AT="2")
    assert (by_number.returncode, by_number.stdout) == (-signal.SIGKILL, "one\n")
    by_label = run(*ARMED, VMRUN_TEST_KILL_AT="thr")
    assert (by_label.returncode, by_label.stdout) == (-signal.SIGKILL, "one\ntwo\n")
    assert by_label.stderr == "vmrun: VMRUN_TEST_KILL_AT: SIGKILL at crash point 3: three\n"


def test_targets_fire_in_order_each_once_with_the_signal_asked_for() -> None:
    result = run(*ARMED, VMRUN_TEST_KILL_AT="two,one,three", VMRUN_TEST_KILL_SIGNAL="INT")
    # "one" is passed before "two" fires, and is not passed again: only "two" fires.
    assert (result.returncode, result.stdout) == (0, "one\ninterrupted at two\ntwo\nthree\n")
    twice = run(*ARMED, VMRUN_TEST_KILL_AT="one,3", VMRUN_TEST_KILL_SIGNAL="INT")
    assert twice.stdout == "interrupted at one\none\ntwo\ninterrupted at three\nthree\n"
