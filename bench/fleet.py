#!/usr/bin/env python3
"""Bring 1, 2, 4 and 8 tiny guests to agent-ready with one `vmrun up DIR`, against as many raw qemu launches.

vmrun:  `vmrun up DIR` wall time until every VM's hooks are done (preflight, taps, launch, agent, ethtool).
raw:    the argv `vmrun render` prints for each VM, started at once by hand on pre-made taps, until every
        agent answers a guest-sync.
Both in the same run, interleaved. Prints per N the medians, the ratio vmrun / raw (target <= 1.03) and
vmrun's own overhead per VM, (vmrun - raw) / N in ms (target <= 150 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boot import REPO, agent_answers, tap_of, vmrun

IMAGES = REPO / "images" / "tiny"
SIZES = (1, 2, 4, 8)


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


def time_vmrun(run_dir: Path, specs: Path) -> float:
    started = time.perf_counter()
    vmrun(run_dir, "up", str(specs))
    elapsed = time.perf_counter() - started
    vmrun(run_dir, "down", "--all", "--force")
    return elapsed


def time_raw(run_dir: Path, argvs: dict[str, list[str]]) -> float:
    taps = {name: tap_of(argv) for name, argv in argvs.items()}
    for name, (tap, mode) in taps.items():
        (run_dir / name).mkdir(mode=0o700, parents=True)
        subprocess.run(["ip", "tuntap", "add", "dev", tap, *mode], check=True)
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(argvs)) as pool:
            list(pool.map(lambda argv: subprocess.run(argv, check=True), argvs.values()))
            list(pool.map(lambda name: agent_answers(run_dir / name / "qga.sock", timeout=600), argvs))
        elapsed = time.perf_counter() - started
        for name in argvs:
            os.kill(int((run_dir / name / "qemu.pid").read_text()), 15)
        time.sleep(1)
        return elapsed
    finally:
        for name, (tap, mode) in taps.items():
            subprocess.run(["ip", "tuntap", "del", "dev", tap, *mode], check=False)
            shutil.rmtree(run_dir / name, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vmrun-bench-") as temporary:
        base = Path(temporary)
        for count in args.sizes:
            specs, run_dir = base / f"specs{count}", base / f"run{count}"
            names = write_specs(specs, count)
            argvs = {name: json.loads(vmrun(run_dir, "render", str(specs / f"{name}.toml"), "--json"))
                     for name in names}
            time_vmrun(run_dir, specs)  # the first start creates the qemu user
            vmrun_times, raw_times = [], []
            for run in range(args.runs):
                vmrun_times.append(time_vmrun(run_dir, specs))
                raw_times.append(time_raw(run_dir, argvs))
                print(f"N={count} run {run + 1}: vmrun up DIR {vmrun_times[-1]:.2f} s, "
                      f"raw qemu {raw_times[-1]:.2f} s", flush=True)
            rows.append((count, statistics.median(vmrun_times), statistics.median(raw_times)))
    print(f"{'N':>3} {'vmrun up DIR':>13} {'raw qemu':>9} {'ratio':>6} {'overhead/VM':>12}   (TCG, 1 vCPU each)")
    for count, vmrun_median, raw_median in rows:
        overhead = (vmrun_median - raw_median) / count * 1000
        print(f"{count:>3} {vmrun_median:>12.2f}s {raw_median:>8.2f}s {vmrun_median / raw_median:>6.3f} "
              f"{overhead:>10.0f}ms")
    print("targets: ratio <= 1.03 at every N, overhead <= 150 ms per VM")


if __name__ == "__main__":
    main()
