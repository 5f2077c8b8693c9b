#!/usr/bin/env python3
"""render.py's figures on the lab's kernel (integration/lab/lab): the L1 guest runs this host's Python and vmrun
under TCG, where every start-up cost is paid many times over.

Boots the lab unless it runs (about a minute), runs `bench/render.py` there, so its rounds are interleaved in
the lab, and stops the lab again if it booted it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from boot import REPO

LAB = REPO / "integration" / "lab" / "lab"


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LAB), *args], text=True, cwd=REPO, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="render rounds; validate runs a quarter as many")
    args = parser.parse_args()
    was_running = subprocess.run([str(LAB), "status"], capture_output=True, check=False).returncode == 0
    if lab("up").returncode:
        raise SystemExit("bench/lab.py: the lab did not come up")
    try:
        print("in the lab (L1 kernel, TCG):", flush=True)
        done = lab("exec", "--", sys.executable, "bench/render.py", "--rounds", str(args.rounds))
        if done.returncode:
            raise SystemExit(f"bench/render.py failed in the lab (exit {done.returncode})")
    finally:
        if not was_running:
            lab("down")


if __name__ == "__main__":
    main()
