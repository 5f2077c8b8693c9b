#!/usr/bin/env python3
"""Boot the tiny guest with `vmrun up` and with raw qemu (the argv `vmrun render` prints), in one run.

vmrun:  `vmrun up specs/tiny.toml` wall time: preflight, launch, agent wait, ethtool step, hooks.
raw:    qemu started by hand with the same argv (same guest, same accelerator) until its agent answers.
step:   the built-in multiqueue step alone, on a running guest: when the pairs are already right (one
        `ethtool -l`) and when they must be set (`ethtool -l`, `-L`, `-l`).
Prints medians and the ratio vmrun / raw (target <= 1.03) and the step per NIC (target <= 150 ms under TCG).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parent.parent
# Every process the benches start runs as an installed vmrun does: with its bytecode cached (some shells
# export PYTHONDONTWRITEBYTECODE, which would make each run compile what it imports afresh).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
SPEC = REPO / "specs" / "tiny.toml"
# The console script pip installs beside this Python, as users run vmrun; else the module.
_SCRIPT = Path(sys.executable).with_name("vmrun")
VMRUN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "vmrun"]


@attrs.frozen
class Timing:
    """A process's wall time and the CPU time it used (user + system), in seconds. On a machine shared
    with other work the wall time includes waiting for a CPU; the CPU time hardly does."""

    wall: float
    cpu: float

    @staticmethod
    def median(samples: list[Timing]) -> Timing:
        return Timing(statistics.median(s.wall for s in samples), statistics.median(s.cpu for s in samples))


def timed(argv: list[str]) -> Timing:
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed (exit {process.returncode})")
    return Timing(time.perf_counter() - started, usage.ru_utime + usage.ru_stime)


def vmrun(run_dir: Path, *args: str) -> str:
    """vmrun with the bench's own run and state directories, so the host's VMs are never touched."""
    state_dir = run_dir.with_name(f"{run_dir.name}-state")
    result = subprocess.run([*VMRUN, "--run-dir", str(run_dir), "--state-dir", str(state_dir), *args],
                            capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"vmrun {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def qmp(socket_path: Path, *commands: str) -> None:
    """Greeting, capabilities, then each command answered: what a hand-written launcher sends."""
    with socket.socket(socket.AF_UNIX) as monitor, monitor.makefile("rwb") as stream:
        monitor.settimeout(30)
        monitor.connect(str(socket_path))
        stream.readline()
        for command in ("qmp_capabilities", *commands):
            stream.write(json.dumps({"execute": command}).encode() + b"\n")
            stream.flush()
            while b'"return"' not in (line := stream.readline()):  # events may come first
                if not line:
                    raise SystemExit(f"raw: QMP hung up before answering {command}")


def agent_answers(socket_path: Path, timeout: float = 180) -> None:
    """A bare guest-sync loop: what a hand-written launcher would do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as agent:
                agent.settimeout(1)
                agent.connect(str(socket_path))
                token = random.randint(1, 2**31)
                agent.sendall(json.dumps({"execute": "guest-sync", "arguments": {"id": token}}).encode())
                reply = b""
                while f'"return": {token}'.encode() not in reply:
                    chunk = agent.recv(4096)
                    if not chunk:
                        raise OSError("agent hung up")
                    reply += chunk
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("raw: the agent did not answer")


def time_vmrun_up(run_dir: Path) -> float:
    started = time.perf_counter()
    vmrun(run_dir, "up", str(SPEC))
    elapsed = time.perf_counter() - started
    vmrun(run_dir, "down", "tiny", "--force")
    return elapsed


def tap_of(argv: list[str]) -> tuple[str, list[str]]:
    """The tap the argv's first NIC opens, and its `ip tuntap` mode."""
    netdev = argv[argv.index("-netdev") + 1]
    tap = netdev.split("ifname=")[1].split(",")[0]
    return tap, ["mode", "tap", *(["multi_queue"] if ",queues=" in netdev else [])]


def gone(pid: int, name: str) -> bool:
    """VM `name`'s qemu has exited, as vmrun tells (machine.is_gone): no such process, or a zombie its new
    parent (init) has not reaped yet whose other threads have ended, so its taps are closed."""
    from vmrun.host.system import Host
    from vmrun.qemu.process import is_gone

    return is_gone(Host(), pid, name)


def time_raw(run_dir: Path, argv: list[str], name: str, timeout: float = 180,
             ready: Callable[[Path], None] | None = None) -> float:
    """qemu started by hand with vmrun's argv on a tap made by hand, until `ready(its run dir)` returns:
    by default, until its agent answers."""
    vm_dir = run_dir / name
    vm_dir.mkdir(mode=0o700, parents=True)
    tap, mode = tap_of(argv)
    subprocess.run(["ip", "tuntap", "add", "dev", tap, *mode], check=True)
    try:
        started = time.perf_counter()
        subprocess.run(argv, check=True)
        if ready is None:
            agent_answers(vm_dir / "qga.sock", timeout=timeout)
        else:
            ready(vm_dir)
        elapsed = time.perf_counter() - started
        pid = int((vm_dir / "qemu.pid").read_text())
        os.kill(pid, 9)
        while not gone(pid, name):
            time.sleep(0.01)
        return elapsed
    finally:
        remove_tap(tap, mode)
        subprocess.run(["rm", "-rf", str(vm_dir)], check=False)


def remove_tap(tap: str, mode: list[str]) -> None:
    """Delete a tap the bench made; a qemu that was just killed may hold it a moment longer (EBUSY)."""
    deadline = time.monotonic() + 10
    while Path("/sys/class/net", tap).exists():
        done = subprocess.run(["ip", "tuntap", "del", "dev", tap, *mode], check=False, capture_output=True, text=True)
        if time.monotonic() > deadline:
            raise SystemExit(f"the bench cannot delete its tap {tap}: {done.stderr.strip() or 'it stays'}")
        time.sleep(0.05)


@attrs.define
class StepTimes:
    """The multiqueue step's times and guest-execs per call, and a bare `ethtool -l` over the agent."""

    setting: list[float] = attrs.Factory(list)
    checking: list[float] = attrs.Factory(list)
    execs_setting: list[int] = attrs.Factory(list)
    execs_checking: list[int] = attrs.Factory(list)
    bare_read: list[float] = attrs.Factory(list)


def time_step(run_dir: Path, repeats: int) -> StepTimes:
    """The multiqueue step when the guest has other pairs (read, set, read back) and when it already has
    them (one read), each `repeats` times, interleaved with one bare `ethtool -l` guest-exec."""
    from vmrun.guest.agent import GuestAgent
    from vmrun.guest.hooks import run_multiqueue_step
    from vmrun.spec.check import validate
    from vmrun.spec.load import load_spec

    spec = validate(load_spec(SPEC), SPEC)
    vmrun(run_dir, "up", str(SPEC))
    times = StepTimes()
    try:
        with GuestAgent(run_dir / "tiny" / "qga.sock") as agent:
            agent.wait_ready(timeout=30)
            execute = agent.exec
            execs = 0

            def counted(*args: Any, **kwargs: Any) -> Any:
                nonlocal execs
                execs += 1
                return execute(*args, **kwargs)

            for _ in range(repeats):
                execute(["ethtool", "-L", "eth0", "combined", "1"], timeout=10)
                agent.exec = counted  # type: ignore[method-assign]
                for step_times, exec_counts in ((times.setting, times.execs_setting),
                                                 (times.checking, times.execs_checking)):
                    execs = 0
                    started = time.perf_counter()
                    run_multiqueue_step(agent, spec, lambda _: None)
                    step_times.append(time.perf_counter() - started)
                    exec_counts.append(execs)
                agent.exec = execute  # type: ignore[method-assign]
                started = time.perf_counter()
                execute(["ethtool", "-l", "eth0"], timeout=10)
                times.bare_read.append(time.perf_counter() - started)
        return times
    finally:
        vmrun(run_dir, "down", "tiny", "--force")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmrun-bench-") as temporary:
        run_dir = Path(temporary) / "run"
        argv = json.loads(vmrun(run_dir, "render", str(SPEC), "--json"))
        vmrun_times, raw_times = [], []
        time_vmrun_up(run_dir)  # first run creates the disk image and the qemu user
        for run in range(args.runs):
            vmrun_times.append(time_vmrun_up(run_dir))
            raw_times.append(time_raw(run_dir, argv, "tiny"))
            print(f"run {run + 1}: vmrun up {vmrun_times[-1]:.2f} s, raw qemu {raw_times[-1]:.2f} s", flush=True)
        step = time_step(run_dir, repeats=10)
    accel = argv[argv.index("-accel") + 1]
    vmrun_median, raw_median = statistics.median(vmrun_times), statistics.median(raw_times)
    print(f"accel {accel}, {args.runs} boots each")
    print(f"vmrun up (launch -> hooks done): median {vmrun_median:.2f} s")
    print(f"raw qemu (start -> agent answers): median {raw_median:.2f} s")
    print(f"ratio {vmrun_median / raw_median:.3f} (target <= 1.03)")
    checking, setting = statistics.median(step.checking) * 1000, statistics.median(step.setting) * 1000
    execs = max(step.execs_checking)
    print(f"ethtool step, 1 NIC, pairs already right: median {checking:.0f} ms over {len(step.checking)}, "
          f"{execs} guest-exec (target: one guest-exec, <= 150 ms): "
          f"{'met' if execs == 1 and checking <= 150 else 'NOT met'}")
    print(f"  a bare `ethtool -l` guest-exec, interleaved: median {statistics.median(step.bare_read) * 1000:.0f} ms")
    print(f"ethtool step, 1 NIC, pairs to set (read, set, read back): median {setting:.0f} ms, "
          f"{max(step.execs_setting)} guest-execs")


if __name__ == "__main__":
    main()
