"""Ctrl-C again and again while VMs roll back: every rollback runs to its end."""

from __future__ import annotations

import subprocess
import sys

from .common import REPO

FLEET = """\
import os, signal, sys, threading, time
from vmrun.run.fleet import run_all

def vm(say, interrupted):
    interrupted.wait()
    for _ in range(10):  # Ctrl-C again and again while this VM rolls back
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    say("rolled back")
    raise KeyboardInterrupt

def first_ctrl_c():
    time.sleep(0.3)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

threading.Thread(target=first_ctrl_c, daemon=True).start()
try:
    run_all([(name, vm) for name in "abcdef"], jobs=None, say=lambda line: sys.stdout.write(line + "\\n"), report=print)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_more_ctrl_c_while_a_fleet_rolls_back_wait_until_every_rollback_ends() -> None:
    result = subprocess.run([sys.executable, "-c", FLEET], capture_output=True, text=True, cwd=REPO, timeout=60)
    lines = result.stdout.splitlines()
    assert lines[0] == "interrupted: rolling back the VMs still starting", result.stdout + result.stderr
    assert sorted(lines[1:7]) == [f"{name}: rolled back" for name in "abcdef"], result.stdout + result.stderr
    assert lines[7:] == ["interrupted"]  # the later Ctrl-C land once the rollbacks are done
    assert (result.returncode, result.stderr) == (0, "")
