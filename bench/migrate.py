#!/usr/bin/env python3
"""Live migration of the tiny guest (TCG here) between two hosts on one machine (the namespaces and sshds of
integration/test_migrate.py), back and forth: total time, downtime and bytes as qemu's query-migrate reports
them, and the wall time of `vmrun migrate` (the remote shell, the destination's preflight and qemu start, the
migration, the source's clean-up). Then --copy-storage, the destination's disks in a mount namespace of its own:
the bytes a whole 64 MiB qcow2 disk moves against an overlay on a 64 MiB base by URL (its top only), the guest
having written the same 1 MiB to each. Prints medians. Needs root, the tiny guest and openssh-server."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from integration.test_migrate import Hosts, guest, tiny_spec, two_hosts  # noqa: E402 - after the path above

BASE_SIZE = 64 * 2**20
WRITTEN = 1  # MiB the guest writes before each move


def copied(hosts: Hosts, directory: Path, kind: str, run: int) -> dict[str, int]:
    """One --copy-storage move of a guest whose disk is the whole image (kind "whole") or an overlay on it by
    URL ("overlay"), after the guest wrote WRITTEN MiB; its report and wall time."""
    first, second = hosts.first, hosts.second
    name = f"{kind[:3]}{run}"
    disks, theirs = directory / f"disks-{name}", directory / f"theirs-{name}"
    disks.mkdir()
    theirs.mkdir()
    base = directory / "base.raw"
    if kind == "whole":
        subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(base), str(disks / f"{name}.qcow2")],
                       check=True)
        extra = ""
    else:
        digest = hashlib.sha256(base.read_bytes()).hexdigest()
        extra = f'base = "{base.as_uri()}"\nbase_digest = "sha256:{digest}"\n'
    up = first.vmrun("up", str(tiny_spec(directory, name, disks=disks, base=extra)),
                     env={"VMRUN_CACHE_DIR": str(first.cache)})
    if up.returncode != 0:
        sys.exit(up.stderr)
    guest(first, name, "dd", "if=/dev/urandom", "of=/dev/sda", "bs=1M", "seek=8", f"count={WRITTEN}", "conv=fsync")
    started = time.monotonic()
    moved = hosts.move(name, first, second, "--copy-storage", remote_vmrun=second.remote_vmrun((theirs, disks)))
    wall = (time.monotonic() - started) * 1000
    if moved.returncode != 0:
        sys.exit(moved.stderr)
    second.vmrun("down", "--force", name)
    return {**json.loads(moved.stdout), "wall_ms": int(wall)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=6, help="migrations, alternating direction (default: 6)")
    parser.add_argument("--copy-runs", type=int, default=3,
                        help="--copy-storage moves of each kind of disk (default: 3)")
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
        (Path(temporary) / "base.raw").write_bytes(os.urandom(BASE_SIZE))
        copies = {kind: [copied(hosts, Path(temporary), kind, run) for run in range(args.copy_runs)]
                  for kind in ("whole", "overlay")}

    def median(key: str) -> float:
        return statistics.median(report[key] for report in reports)

    print(f"tiny guest (256M, TCG), {args.runs} migrations: downtime {median('downtime_ms'):.0f} ms, qemu total "
          f"{median('total_ms'):.0f} ms, {median('bytes') / 2**20:.1f} MiB sent, `vmrun migrate` wall "
          f"{statistics.median(walls):.0f} ms (medians)")
    for kind, what in (("whole", "a whole 64 MiB qcow2 disk"), ("overlay", "an overlay on a 64 MiB base by URL")):
        runs = copies[kind]
        print(f"--copy-storage of {what}, {WRITTEN} MiB written, {args.copy_runs} moves: disk "
              f"{statistics.median(run['disk_bytes'] for run in runs) / 2**20:.1f} MiB, all "
              f"{statistics.median(run['bytes'] for run in runs) / 2**20:.1f} MiB, qemu total "
              f"{statistics.median(run['total_ms'] for run in runs):.0f} ms, downtime "
              f"{statistics.median(run['downtime_ms'] for run in runs):.0f} ms, `vmrun migrate` wall "
              f"{statistics.median(run['wall_ms'] for run in runs):.0f} ms (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
