#!/usr/bin/env python3
"""Bring 1, 2, 4 and 8 tiny guests to agent-ready with one `vmrun up DIR`, against as many raw qemu launches.

up:      `vmrun up DIR` until every VM's hooks are done (preflight, taps, launch, agent, ethtool), against
         the argv `vmrun render` prints for each VM, started at once by hand on pre-made taps, until every
         agent answers a guest-sync. Interleaved; per N the medians and the ratio (target <= 1.05).
down:    `vmrun down --all` (ACPI powerdown, then the host changes undone) against the slowest of the raw
         guests powered down at once over QMP until its qemu exits (target: at most 0.5 s more, at N=8).
status:  with the N=8 fleet up, `vmrun status` (vmrun's state and /proc, no VM asked) against the import
         floor `python -c 'import attrs, cattrs'` (target <= 1.3); `vmrun status -a` (QMP and the agents, in
         parallel) against the floor + the slowest agent's first answer (all asked at once) + 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boot import REPO, VMRUN, Timing, agent_answers, gone, qmp, remove_tap, tap_of, timed, vmrun

IMAGES = REPO / "images" / "tiny"
SIZES = (1, 2, 4, 8)
UP_TARGET = 1.05
DOWN_MARGIN = 0.5
STATUS_TARGET = 1.3
STATUS_ROUNDS = 7
ADDRESSES_MARGIN = 0.05


def write_specs(directory: Path, count: int) -> list[str]:
    directory.mkdir()
    names = [f"bench{index}" for index in range(count)]
    for name in names:
        (directory / f"{name}.toml").write_text(f"""\
name = "{name}"
[machine]
cpus = 1
memory = "256M"
[boot]
kernel = "{IMAGES / 'vmlinuz'}"
initrd = "{IMAGES / 'initrd.gz'}"
append = "console=ttyS0 quiet"
[[nics]]
id = "net0"
[agent]
timeout = "600s"
""")
    return names


def elapsed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def status_against_floors(run_dir: Path) -> dict[str, Timing]:
    state_dir = run_dir.with_name(f"{run_dir.name}-state")
    status = [*VMRUN, "--run-dir", str(run_dir), "--state-dir", str(state_dir), "status"]
    commands = {"status": status, "status -a": [*status, "-a"], "floor": [sys.executable, "-c", "import attrs, cattrs"]}
    sockets = sorted(run_dir.glob("*/qga.sock"))
    samples: dict[str, list[Timing]] = {name: [] for name in [*commands, "slowest agent"]}
    for _ in range(STATUS_ROUNDS):
        for name, argv in commands.items():
            samples[name].append(timed(argv))
        with ThreadPoolExecutor(max_workers=len(sockets)) as pool:
            slowest = max(pool.map(lambda socket: elapsed(lambda: agent_answers(socket, timeout=10)), sockets))
        samples["slowest agent"].append(Timing(slowest, 0.0))
    return {name: Timing.median(times) for name, times in samples.items()}


def time_vmrun(run_dir: Path, specs: Path, *, with_status: bool) -> tuple[float, float, dict[str, Timing]]:
    """`up DIR`, then (with the fleet up) status, then `down --all`: the seconds of up and of down."""
    up = elapsed(lambda: vmrun(run_dir, "up", str(specs)))
    try:
        statuses = status_against_floors(run_dir) if with_status else {}
    except BaseException:
        vmrun(run_dir, "down", "--all", "--force")  # a failed measurement leaves no fleet running
        raise
    down = elapsed(lambda: vmrun(run_dir, "down", "--all", "--timeout", "120"))
    return up, down, statuses


def powerdown(run_dir: Path, name: str, pid: int) -> float:
    """system_powerdown over QMP, until the qemu process is gone."""
    started = time.perf_counter()
    qmp(run_dir / name / "qmp.sock", "system_powerdown")
    while not gone(pid, name):
        time.sleep(0.01)
    return time.perf_counter() - started


def time_raw(run_dir: Path, argvs: dict[str, list[str]]) -> tuple[float, float]:
    """The raw launches until every agent answers, then the slowest of their powerdowns, started at once."""
    taps = {name: tap_of(argv) for name, argv in argvs.items()}
    for name, (tap, mode) in taps.items():
        (run_dir / name).mkdir(mode=0o700, parents=True)
        subprocess.run(["ip", "tuntap", "add", "dev", tap, *mode], check=True)
    try:
        with ThreadPoolExecutor(max_workers=len(argvs)) as pool:
            started = time.perf_counter()
            list(pool.map(lambda argv: subprocess.run(argv, check=True), argvs.values()))
            list(pool.map(lambda name: agent_answers(run_dir / name / "qga.sock", timeout=600), argvs))
            up = time.perf_counter() - started
            pids = {name: int((run_dir / name / "qemu.pid").read_text()) for name in argvs}
            down = max(pool.map(lambda name: powerdown(run_dir, name, pids[name]), argvs))
        return up, down
    finally:
        for name, (tap, mode) in taps.items():
            pidfile = run_dir / name / "qemu.pid"
            if pidfile.exists() and not gone(int(pidfile.read_text()), name):
                os.kill(int(pidfile.read_text()), 9)
                time.sleep(0.2)
            remove_tap(tap, mode)
            shutil.rmtree(run_dir / name, ignore_errors=True)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    args = parser.parse_args()
    rows = []
    statuses: dict[str, Timing] = {}
    with tempfile.TemporaryDirectory(prefix="vmrun-bench-") as temporary:
        base = Path(temporary)
        for count in args.sizes:
            specs, run_dir = base / f"specs{count}", base / f"run{count}"
            names = write_specs(specs, count)
            argvs = {name: json.loads(vmrun(run_dir, "render", str(specs / f"{name}.toml"), "--json"))
                     for name in names}
            vmrun(run_dir, "up", str(specs))  # the first start creates the qemu user
            vmrun(run_dir, "down", "--all", "--force")
            samples: dict[str, list[float]] = {"vmrun up": [], "raw up": [], "vmrun down": [], "raw down": []}
            for run in range(args.runs):
                last = run == args.runs - 1 and count == max(args.sizes)
                vmrun_up, vmrun_down, measured = time_vmrun(run_dir, specs, with_status=last)
                statuses |= measured
                raw_up, raw_down = time_raw(run_dir, argvs)
                for key, value in (("vmrun up", vmrun_up), ("raw up", raw_up), ("vmrun down", vmrun_down),
                                   ("raw down", raw_down)):
                    samples[key].append(value)
                print(f"N={count} run {run + 1}: up {vmrun_up:.2f} s vmrun, {raw_up:.2f} s raw; "
                      f"down {vmrun_down:.2f} s vmrun, slowest raw powerdown {raw_down:.2f} s", flush=True)
            rows.append((count, {key: statistics.median(values) for key, values in samples.items()}))
    print(f"\n{'N':>3} {'vmrun up DIR':>13} {'raw qemu':>9} {'ratio':>6} {'overhead/VM':>12}   "
          f"{'down --all':>11} {'raw slowest':>12}   (medians of {args.runs}; TCG, 1 vCPU each)")
    for count, median in rows:
        overhead = (median["vmrun up"] - median["raw up"]) / count * 1000
        print(f"{count:>3} {median['vmrun up']:>12.2f}s {median['raw up']:>8.2f}s "
              f"{median['vmrun up'] / median['raw up']:>6.3f} {overhead:>10.0f}ms   "
              f"{median['vmrun down']:>10.2f}s {median['raw down']:>11.2f}s")
    print(f"up DIR / raw <= {UP_TARGET} at every N: "
          f"{verdict(all(m['vmrun up'] / m['raw up'] <= UP_TARGET for _, m in rows))}")
    count, median = rows[-1]
    print(f"down --all of {count} <= slowest raw powerdown + {DOWN_MARGIN} s: "
          f"{verdict(median['vmrun down'] <= median['raw down'] + DOWN_MARGIN)}")
    if statuses:
        status, addresses, floor = statuses["status"], statuses["status -a"], statuses["floor"]
        slowest = statuses["slowest agent"].wall
        print(f"status of {count} running VMs {status.wall * 1000:.0f} ms ({status.cpu * 1000:.0f} ms of CPU) / "
              f"floor {floor.wall * 1000:.0f} ms ({floor.cpu * 1000:.0f} ms of CPU): {status.wall / floor.wall:.2f} "
              f"(CPU {status.cpu / floor.cpu:.2f}), target <= {STATUS_TARGET}: "
              f"{verdict(status.wall / floor.wall <= STATUS_TARGET)}")
        bound = floor.wall + slowest + ADDRESSES_MARGIN
        print(f"status -a of {count} {addresses.wall * 1000:.0f} ms ({addresses.cpu * 1000:.0f} ms of CPU); floor "
              f"{floor.wall * 1000:.0f} ms + slowest agent's first answer {slowest * 1000:.0f} ms + "
              f"{ADDRESSES_MARGIN * 1000:.0f} ms = {bound * 1000:.0f} ms: {verdict(addresses.wall <= bound)}")

if __name__ == "__main__":
    main()
