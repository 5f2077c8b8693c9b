#!/usr/bin/env python3
"""Time `vmrun up` of a 1 GiB guest with and without 2 MiB huge pages, in interleaved rounds.

Both are the tiny guest's kernel with 1 vCPU, 1 GiB, a user-mode NIC and no agent, so `up` ends once qemu runs.
With huge pages, `up` includes growing the pool by 512 pages (preflight, journaled) and `down` gives them back,
so each round pays the reservation as a first VM on the host does. Under TCG guest memory bandwidth says
nothing about huge pages (TLB misses are emulated), so this measures start-up only. Run as root.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images" / "tiny"
VMRUN = [sys.executable, "-m", "vmrun"]


def spec(directory: Path, name: str, hugepages: bool) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(f"""name = "{name}"
[machine]
cpus = 1
memory = "1G"
{'hugepages = "2M"' if hugepages else ''}
[boot]
kernel = "{IMAGES / 'vmlinuz'}"
initrd = "{IMAGES / 'initrd.gz'}"
append = "console=ttyS0 quiet"
[[nics]]
id = "net0"
mode = "user"
[agent]
enabled = false
""")
    return path


def up_seconds(run_dir: Path, spec_path: Path, name: str) -> float:
    options = ["--run-dir", str(run_dir), "--state-dir", str(run_dir / "state")]
    started = time.perf_counter()
    subprocess.run([*VMRUN, *options, "up", str(spec_path)], check=True, cwd=REPO, capture_output=True)
    elapsed = time.perf_counter() - started
    subprocess.run([*VMRUN, *options, "down", name, "--timeout", "1", "--force"], check=True, cwd=REPO,
                   capture_output=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="vmrun-bench-hugepages-") as temporary:
        directory = Path(temporary)
        specs = {"plain": spec(directory, "bench-plain", False), "hugepages": spec(directory, "bench-huge", True)}
        times: dict[str, list[float]] = {kind: [] for kind in specs}
        for _ in range(rounds):
            for kind, path in specs.items():
                times[kind].append(up_seconds(directory / "run", path, path.stem))
    load = Path("/proc/loadavg").read_text().split()[0]
    for kind, samples in times.items():
        print(f"up of a 1 GiB guest, {kind:<9}: median {statistics.median(samples) * 1000:.0f} ms "
              f"(min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f}, {rounds} rounds)")
    ratio = statistics.median(times["hugepages"]) / statistics.median(times["plain"])
    print(f"huge pages / plain: {ratio:.2f} (load {load})")


if __name__ == "__main__":
    main()
