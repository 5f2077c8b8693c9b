#!/usr/bin/env python3
"""This tree's vmrun against an earlier commit's, in one run: `render specs/db.toml` ÷ the import floor and
`validate` of 1,000 specs, CPU medians of interleaved rounds.

The earlier commit's vmrun/ is taken with `git archive` into a temporary directory and run with the same
Python and dependencies (a dependency it needs and this tree dropped must still be installed). Both run as
`python -c` importing their package, so neither has the console script's advantage.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from boot import REPO
from render import write_specs

ENTRY = "import sys; sys.argv[0] = 'vmrun'; from vmrun.__main__ import main; main()"  # the same entry on both sides


def cpu_time(argv: list[str], tree: Path) -> float:
    """The process's CPU seconds; it runs in tree, so `import vmrun` finds that tree's package."""
    process = subprocess.Popen(argv, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(argv[:4])} ... failed in {tree}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=21, help="render rounds; validate runs a third as many")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmrun-versus-") as temporary:
        earlier = Path(temporary) / "earlier"
        earlier.mkdir()
        archive = subprocess.run(["git", "archive", args.rev, "vmrun", "specs"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(earlier)], input=archive, check=True)
        specs = Path(temporary) / "specs"
        specs.mkdir()
        paths = write_specs(specs)
        trees = {args.rev: earlier, "this tree": REPO}
        commands = {
            "render": (args.rounds, ["render", "specs/db.toml"]),
            f"validate of {len(paths)} specs": (max(3, args.rounds // 3), ["validate", *paths]),
        }
        floor = [sys.executable, "-c", "import attrs, cattrs"]
        for name, (rounds, command) in commands.items():
            for tree in trees.values():  # bytecode written, as any earlier use would have
                cpu_time([sys.executable, "-c", ENTRY, *command], tree)
            times: dict[str, list[float]] = {label: [] for label in [*trees, "floor"]}
            for _ in range(rounds):
                for label, tree in trees.items():
                    times[label].append(cpu_time([sys.executable, "-c", ENTRY, *command], tree))
                times["floor"].append(cpu_time(floor, REPO))
            medians = {label: statistics.median(samples) * 1000 for label, samples in times.items()}
            shown = ", ".join(f"{label} {ms:.1f} ms" + (f" ({ms / medians['floor']:.2f} x the floor)"
                                                          if name == "render" and label != "floor" else "")
                              for label, ms in medians.items() if label != "floor" or name == "render")
            print(f"{name}, CPU medians of {rounds} interleaved rounds: {shown}")


if __name__ == "__main__":
    main()
