#!/usr/bin/env python3
"""Live migration of the tiny guest (TCG here) between two hosts on one machine (the namespaces and sshds of
integration/test_migrate.py), back and forth: total time, downtime and bytes as qemu's query-migrate reports
them, and the wall time of `vmrun migrate` (the remote shell, the destination's preflight and qemu start, the
migration, the source's clean-up). Prints medians. Needs root, the tiny guest and openssh-server."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from integration.test_migrate import guest, tiny_spec, two_hosts  # noqa: E402 - after the path above


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=6, help="migrations, alternating direction (default: 6)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmrun-bench-migrate-") as temporary, two_hosts(Path(temporary)) as hosts:
        sides = [hosts.first, hosts.second]
        up = sides[0].vmrun("up", str(tiny_spec(Path(temporary), "bench")))
        if up.returncode != 0:
            sys.exit(up.stderr)
        boot_id = guest(sides[0], "bench", "cat", "/proc/sys/kernel/random/boot_id")
        reports, walls = [], []
        for run in range(args.runs):
            source, destination = sides[run % 2], sides[(run + 1) % 2]
            started = time.monotonic()
            moved = hosts.move("bench", source, destination)
            walls.append((time.monotonic() - started) * 1000)
            if moved.returncode != 0:
                sys.exit(moved.stderr)
            reports.append(json.loads(moved.stdout))
        assert guest(sides[args.runs % 2], "bench", "cat", "/proc/sys/kernel/random/boot_id") == boot_id
        sides[args.runs % 2].vmrun("down", "--force", "bench")

    def median(key: str) -> float:
        return statistics.median(report[key] for report in reports)

    print(f"tiny guest (256M, TCG), {args.runs} migrations: downtime {median('downtime_ms'):.0f} ms, qemu total "
          f"{median('total_ms'):.0f} ms, {median('bytes') / 2**20:.1f} MiB sent, `vmrun migrate` wall "
          f"{statistics.median(walls):.0f} ms (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
