#!/usr/bin/env python3
"""How much `vmrun render specs/db.toml` costs over its dependency floor (`import attrs, cattrs`).

Both are timed as whole processes, interleaved, in one run on one machine; the figure is the ratio
of medians. Target: <= 1.5.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = 21


# As an installed vmrun runs: with its bytecode cached (some shells export PYTHONDONTWRITEBYTECODE).
ENVIRONMENT = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def wall_time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=ENVIRONMENT
    )
    return time.perf_counter() - started


def main() -> None:
    render = [sys.executable, "-m", "vmrun.cli", "render", "specs/db.toml"]
    floor = [sys.executable, "-c", "import attrs, cattrs"]
    wall_time(render)  # fills the bytecode and qemu capability caches, as any earlier use of vmrun would have
    wall_time(floor)
    render_times, floor_times = [], []
    for _ in range(RUNS):
        render_times.append(wall_time(render))
        floor_times.append(wall_time(floor))
    render_median, floor_median = statistics.median(render_times), statistics.median(floor_times)
    print(f"vmrun render specs/db.toml: median {render_median * 1000:.0f} ms over {RUNS} runs")
    print(f"python -c 'import attrs, cattrs': median {floor_median * 1000:.0f} ms")
    print(f"ratio {render_median / floor_median:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
