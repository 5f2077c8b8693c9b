#!/usr/bin/env python3
"""Boot the Debian 12 disk guest with `vmrun up` and with raw qemu (the same argv, overlay and seed), in one run.

vmrun:  `vmrun up` of specs/debian.toml until its hooks are done (preflight, overlay, seed, launch, agent,
        ethtool step).
raw:    qemu started by hand with the argv `vmrun render` prints, on a tap made by hand, until the agent
        answers a guest-sync.
A first `vmrun up` makes the overlay, the seed and the UEFI variables and lets cloud-init do its first-boot
work, so every timed boot after it is a later boot of the same instance. Prints the medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w
from boot import REPO, time_raw, vmrun

SPEC = REPO / "specs" / "debian.toml"
NAME = "benchdeb"  # not the checked-in spec's name: its state (UEFI variables, seed) stays untouched


def bench_spec(directory: Path) -> Path:
    """specs/debian.toml with its overlay in the bench's own directory, so the user's overlay is untouched."""
    data = tomllib.loads(SPEC.read_text())
    data["name"] = NAME
    base = Path(os.path.normpath(SPEC.parent / data["disks"][0]["base"]))  # through images/, as the spec has it
    data["disks"][0] |= {"path": str(directory / "root.qcow2"), "base": str(base)}
    data["cloud_init"] = {key: str(SPEC.parent / value) for key, value in data["cloud_init"].items()}
    data["agent"]["timeout"] = "900s"
    spec = directory / "debian.toml"
    spec.write_text(tomli_w.dumps(data))
    return spec


def time_vmrun_up(run_dir: Path, spec: Path) -> float:
    started = time.perf_counter()
    vmrun(run_dir, "up", str(spec))
    elapsed = time.perf_counter() - started
    vmrun(run_dir, "down", NAME, "--timeout", "120")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmrun-bench-") as temporary:
        directory = Path(temporary)
        spec = bench_spec(directory)
        run_dir = directory / "run"
        time_vmrun_up(run_dir, spec)  # first boot: overlay, seed, UEFI variables, cloud-init's first run
        argv = json.loads(vmrun(run_dir, "render", str(spec), "--json"))
        vmrun_times, raw_times = [], []
        for run in range(args.runs):
            vmrun_times.append(time_vmrun_up(run_dir, spec))
            raw_times.append(time_raw(run_dir, argv, NAME, timeout=900))
            print(f"run {run + 1}: vmrun up {vmrun_times[-1]:.2f} s, raw qemu {raw_times[-1]:.2f} s", flush=True)
    vmrun_median, raw_median = statistics.median(vmrun_times), statistics.median(raw_times)
    accel = argv[argv.index("-accel") + 1]
    print(f"Debian 12 from disk (UEFI, overlay, seed), {args.runs} later boots each, accel {accel}")
    print(f"vmrun up (-> hooks done): median {vmrun_median:.2f} s")
    print(f"raw qemu (-> agent answers): median {raw_median:.2f} s")
    print(f"ratio {vmrun_median / raw_median:.3f}")


if __name__ == "__main__":
    main()
