"""Shared test data: a good spec and the host facts golden tests assume; a guard against a test that blocks."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

from vmrun.host.facts import HostFacts
from vmrun.state.locations import RunPaths

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"

# A spec with one of everything, valid as written; tests append to it or replace parts of it.
GOOD_SPEC = """\
name = "web"

[machine]
cpus = 4
memory = "2G"

[boot]
kernel = "vmlinuz"
append = "console=ttyS0"

[[disks]]
id = "root"
path = "root.qcow2"
format = "qcow2"

[[nics]]
id = "net0"
queues = 4

[[shares]]
id = "data"
path = "/srv/data"
tag = "data"

[[vfio]]
id = "nvme0"
host = "01:00.0"
"""

# What render assumes of the host in golden tests: TCG, vmrun running as root on a QEMU with seccomp.
GOLDEN_FACTS = HostFacts(
    kvm_usable=False, kvm_reason="no KVM in tests", drop_privileges=True, seccomp=True,
)


def golden_paths(name: str) -> RunPaths:
    return RunPaths(run_dir=Path("/run/vmrun") / name, state_dir=Path("/var/lib/vmrun") / name)


@contextlib.contextmanager
def unless_it_hangs() -> Iterator[None]:
    """What blocks for good (an open() waiting for a FIFO's writer) fails the test instead of hanging it."""
    def hung(*_: object) -> None:
        raise AssertionError("blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
