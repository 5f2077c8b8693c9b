"""`vmrun snapshot` on the tiny guest with real qemu: a restore brings back RAM (a file in the initramfs's /tmp) and
disk (a block the guest wrote) together; snapshots live in the qcow2 file, so they outlive `down` and `up`."""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from .conftest import REPO, Vmrun

TINY = REPO / "specs" / "tiny.toml"
IMAGES = REPO / "images" / "tiny"

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not (IMAGES / "vmlinuz").exists(),
                       reason="tiny guest not built: run integration/tiny-guest/build"),
]


def snap_spec(vmrun: Vmrun, disk: Path, disk_format: str) -> Path:
    """specs/tiny.toml with one disk of this format and neither NIC nor share: a mounted 9p share blocks a
    snapshot as it blocks a migration, and a NIC adds nothing here."""
    data = tomllib.loads(TINY.read_text())
    for section in ("kubevirt", "nics", "shares"):
        data.pop(section)
    data.update(
        name="snap",
        boot={**data["boot"], "kernel": str(IMAGES / "vmlinuz"), "initrd": str(IMAGES / "initrd.gz")},
        disks=[{"id": "data", "path": str(disk), "format": disk_format, "size": "16M"}],
    )
    return vmrun.spec(tomli_w.dumps(data), "snap.toml")


def guest(vmrun: Vmrun, script: str) -> str:
    result = vmrun("exec", "snap", "--", "/bin/sh", "-c", script)
    assert result.returncode == 0, f"{script}: {result.stderr}"
    return result.stdout


def mark(vmrun: Vmrun, word: str) -> None:
    """The word in RAM only (the initramfs's /tmp) and at the start of the disk."""
    guest(vmrun, f"echo {word} > /tmp/mark && printf '%-16s' {word} | dd of=/dev/sda conv=fsync 2>/dev/null")


def marks(vmrun: Vmrun) -> tuple[str, str]:
    """What the guest has in RAM, and what it reads from its disk past its page cache."""
    ram = guest(vmrun, "cat /tmp/mark 2>/dev/null || echo none").strip()
    disk = guest(vmrun, "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/sda bs=16 count=1 2>/dev/null").strip()
    return ram, disk


def snapshots(vmrun: Vmrun, vm: str) -> dict[str, Any]:
    listed = vmrun("snapshot", "list", vm, "--json")
    assert listed.returncode == 0, listed.stderr
    answer: dict[str, Any] = json.loads(listed.stdout)
    return answer


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.fixture
def running(vmrun: Vmrun, reachable_tmp: Path) -> Iterator[Path]:
    spec = snap_spec(vmrun, reachable_tmp / "data.qcow2", "qcow2")
    up = vmrun("up", str(spec))
    try:
        assert up.returncode == 0, up.stderr
        yield spec
    finally:
        ok(vmrun("down", "snap", "--force"))


def test_restore_brings_back_ram_and_disk_and_the_snapshot_outlives_down(
    vmrun: Vmrun, running: Path, reachable_tmp: Path
) -> None:
    mark(vmrun, "before")
    assert "vmrun: snap: saved snapshot before (" in ok(vmrun("snapshot", "save", "snap", "before"))
    mark(vmrun, "after")
    assert marks(vmrun) == ("after", "after")
    ok(vmrun("snapshot", "restore", "snap", "before"))
    assert marks(vmrun) == ("before", "before")

    [saved] = snapshots(vmrun, "snap")["snapshots"]
    assert (saved["tag"], saved["disks"]) == ("before", ["data"])
    assert saved["vm_state_size"] > 2**20 and saved["guest_clock"] > 0  # the guest's RAM, taken while it ran
    again = vmrun("snapshot", "save", "snap", "before")
    assert (again.returncode, again.stderr.splitlines()[0]) == (
        2, "vmrun: error: snap already has a snapshot 'before'")
    ok(vmrun("snapshot", "save", "snap", "second"))
    assert [found["tag"] for found in snapshots(vmrun, "snap")["snapshots"]] == ["before", "second"]
    ok(vmrun("snapshot", "rm", "snap", "second"))
    assert [found["tag"] for found in snapshots(vmrun, "snap")["snapshots"]] == ["before"]

    ok(vmrun("down", "snap"))
    stopped = snapshots(vmrun, str(running))
    assert stopped["state"] == "stopped"
    assert [(found["tag"], found["vm_state_size"]) for found in stopped["snapshots"]] == [
        ("before", saved["vm_state_size"])]
    refused = vmrun("snapshot", "restore", str(running), "before")
    assert refused.returncode == 2 and f"vmrun: hint: vmrun up {running}, then" in refused.stderr

    ok(vmrun("up", str(running)))  # a fresh boot: nothing in /tmp, the disk as the guest last left it
    assert marks(vmrun) == ("none", "before")
    mark(vmrun, "rebooted")
    ok(vmrun("snapshot", "restore", "snap", "before"))
    assert marks(vmrun) == ("before", "before")
    ok(vmrun("down", "snap", "--force"))
    ok(vmrun("snapshot", "rm", str(running), "before"))
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(reachable_tmp / "data.qcow2")],
                                     capture_output=True, text=True, check=True).stdout)
    assert "snapshots" not in info


def test_a_running_vm_with_a_raw_disk_is_refused_and_qemu_is_not_asked(vmrun: Vmrun, reachable_tmp: Path) -> None:
    spec = snap_spec(vmrun, reachable_tmp / "data.raw", "raw")
    ok(vmrun("up", str(spec)))
    try:
        mark(vmrun, "kept")
        refused = vmrun("snapshot", "save", "snap", "first")
        assert refused.returncode == 2
        assert refused.stderr.splitlines()[0] == "vmrun: error: snap: disks[0]: a raw disk cannot hold a snapshot " \
            f"(hint: convert it: qemu-img convert -O qcow2 {reachable_tmp / 'data.raw'} NEW.qcow2, and name " \
            'NEW.qcow2 with format = "qcow2")'
        assert "Traceback" not in refused.stderr
        assert marks(vmrun) == ("kept", "kept")  # the guest ran on untouched
    finally:
        ok(vmrun("down", "snap", "--force"))
