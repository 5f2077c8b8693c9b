#!/usr/bin/env python3
"""vmrun's commands that start no VM, against their dependency floor (`python -c 'import attrs, cattrs'`).

render:    `vmrun render specs/db.toml` against the floor, whole processes, interleaved: the ratio of
           medians (target <= 1.5).
validate:  `vmrun validate` of 1,000 specs (specs/db.toml under 1,000 names) in one process (target
           <= 0.3 s), interleaved with `vmrun validate` of one of them, which tells the start-up's share.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from boot import REPO, VMRUN, Timing, timed

RENDER_TARGET = 1.5
VALIDATE_TARGET = 0.3
SPECS = 1000


def interleaved(commands: dict[str, list[str]], rounds: int) -> dict[str, Timing]:
    """Each command once per round, in turn; the medians of each."""
    for argv in commands.values():
        timed(argv)  # fills the bytecode and qemu capability caches, as any earlier use would have
    times: dict[str, list[Timing]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            times[name].append(timed(argv))
    return {name: Timing.median(samples) for name, samples in times.items()}


def write_specs(directory: Path) -> list[str]:
    text = (REPO / "specs" / "db.toml").read_text()
    paths = []
    for index in range(SPECS):
        path = directory / f"db{index}.toml"
        path.write_text(text.replace('name = "db"', f'name = "db{index}"', 1))
        paths.append(str(path))
    return paths


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    floor = [sys.executable, "-c", "import attrs, cattrs"]
    medians = interleaved({"render": [*VMRUN, "render", "specs/db.toml"], "floor": floor}, args.rounds)
    render, floor_time = medians["render"], medians["floor"]
    ratio = render.wall / floor_time.wall
    print(f"vmrun render specs/db.toml: median {render.wall * 1000:.0f} ms over {args.rounds} rounds "
          f"({render.cpu * 1000:.0f} ms of CPU)")
    print(f"python -c 'import attrs, cattrs': median {floor_time.wall * 1000:.0f} ms "
          f"({floor_time.cpu * 1000:.0f} ms of CPU)")
    print(f"  ratio {ratio:.2f} (CPU: {render.cpu / floor_time.cpu:.2f}), target <= {RENDER_TARGET}: "
          f"{verdict(ratio <= RENDER_TARGET)}")
    with tempfile.TemporaryDirectory(prefix="vmrun-bench-") as temporary:
        paths = write_specs(Path(temporary))
        rounds = max(3, args.rounds // 4)
        medians = interleaved({"all": [*VMRUN, "validate", *paths], "one": [*VMRUN, "validate", paths[0]]}, rounds)
    every, one = medians["all"], medians["one"]
    print(f"vmrun validate of {SPECS} specs in one process: median {every.wall:.2f} s over {rounds} rounds "
          f"({every.cpu:.2f} s of CPU), target <= {VALIDATE_TARGET} s: {verdict(every.wall <= VALIDATE_TARGET)}")
    print(f"  of which start-up (validate of one spec) {one.wall:.2f} s ({one.cpu:.2f} s of CPU), "
          f"the {SPECS} specs {every.wall - one.wall:.2f} s ({every.cpu - one.cpu:.2f} s of CPU)")


if __name__ == "__main__":
    main()
