"""End to end on the tiny guest (TCG here, KVM in GitHub Actions): disks, multiqueue, 9p, agent, powerdown."""

from __future__ import annotations

import ipaddress
import os
import re
import select
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from vmrun.guest.agent import GuestAgent
from vmrun.guest.hooks import current_combined, run_multiqueue_step
from vmrun.spec.check import validate
from vmrun.spec.load import load_spec

from .conftest import REPO, Vmrun

TINY = REPO / "specs" / "tiny.toml"
IMAGES = REPO / "images" / "tiny"

pytestmark = pytest.mark.skipif(
    not (IMAGES / "vmlinuz").exists(), reason="tiny guest not built: run integration/tiny-guest/build"
)


def link_local(mac: str) -> str:
    """The IPv6 link-local address the guest's kernel derives from a MAC (EUI-64)."""
    octets = [int(part, 16) for part in mac.split(":")]
    eui64 = bytes([octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui64))


def guest(vmrun: Vmrun, name: str, *command: str) -> str:
    result = vmrun("exec", name, "--", *command)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


@pytest.fixture
def tiny(vmrun: Vmrun) -> Iterator[str]:
    up = vmrun("up", str(TINY))
    try:
        assert up.returncode == 0, up.stderr
        yield up.stderr
    finally:
        down = vmrun("down", "tiny", "--timeout", "30")
        assert down.returncode == 0, down.stderr
        first, *between, last = down.stderr.splitlines()
        assert (first, last) == ("vmrun: asking tiny to power down (ACPI), waiting up to 30 s",
                                 "vmrun: tiny stopped (ACPI powerdown)")
        # The data disk this up created, if it did: down keeps it and says how to remove it by hand.
        assert between in ([], [f"vmrun: kept on purpose, as down keeps disk images, their directories and system "
                                f"users (by hand: remove {TINY.parent.parent / 'images' / 'tiny-data.raw'})"]), between


def test_tiny_guest_boots_with_every_device_working(vmrun: Vmrun, tiny: str) -> None:
    assert re.search(r"^vmrun: guest agent ready after \d+\.\d s$", tiny, re.MULTILINE)
    # The guest's kernel (virtio_net) already uses as many pairs as it has vCPUs: the step only reads them back.
    assert re.search(r"^vmrun: ethtool net0 eth0 combined 4 ✓ \(already, \d+ ms\)$", tiny, re.MULTILINE)
    assert current_combined(guest(vmrun, "tiny", "ethtool", "-l", "eth0")) == 4
    # The one disk is a SCSI disk (scsi-hd, target 0) on the virtio-scsi controller, not a virtio-blk /dev/vda:
    # 64M, as the spec creates it.
    assert guest(vmrun, "tiny", "ls", "/sys/block") == "sda\n"
    assert guest(vmrun, "tiny", "readlink", "-f", "/sys/block/sda") == (
        "/sys/devices/pci0000:00/0000:00:01.0/virtio0/host0/target0:0:0/0:0:0:0/block/sda\n")
    assert guest(vmrun, "tiny", "cat", "/sys/block/sda/device/model") == "QEMU HARDDISK   \n"
    assert guest(vmrun, "tiny", "cat", "/sys/block/sda/size") == f"{64 * 2048}\n"
    # The read-only 9p share is qemu's keymaps directory.
    assert guest(vmrun, "tiny", "cat", "/mnt/keymaps/en-us") == Path("/usr/share/qemu/keymaps/en-us").read_text()
    denied = vmrun("exec", "tiny", "--", "touch", "/mnt/keymaps/written-by-guest")
    assert (denied.returncode, denied.stdout, denied.stderr) == (
        1, "", "touch: /mnt/keymaps/written-by-guest: Read-only file system\n")
    assert vmrun("logs", "tiny").stdout.splitlines()[0] == "tiny-guest: ready"
    [status] = vmrun("status", "-a").stdout.splitlines()
    spec = load_spec(TINY)
    address = link_local(spec.nics[0].guest_mac)
    assert re.fullmatch(rf"tiny +running +pid \d+ +(tcg|kvm) +up \d+s +{vmrun.run_root}/tiny  agent ok  "
                        rf"eth0 {address}/64", status), status


def test_console_gives_a_shell_and_ctrl_bracket_detaches(vmrun: Vmrun, tiny: str) -> None:
    controller, terminal = os.openpty()
    console = subprocess.Popen(
        [sys.executable, "-m", "vmrun", "--run-dir", str(vmrun.run_root), "console", "tiny"],
        stdin=terminal, stdout=terminal, stderr=subprocess.PIPE, cwd=REPO,
    )
    os.close(terminal)
    try:
        assert console.stderr is not None and b"attached" in console.stderr.readline()
        seen = b""
        deadline = time.monotonic() + 30
        # The shell may still be starting (and flush what was typed): ask again until it answers.
        while b"console-42" not in seen and time.monotonic() < deadline:
            os.write(controller, b"echo console-$((6*7))\r")
            until = time.monotonic() + 2
            while b"console-42" not in seen and time.monotonic() < until:
                if select.select([controller], [], [], 0.2)[0]:
                    seen += os.read(controller, 4096)
        assert b"console-42" in seen
        os.write(controller, b"\x1d")
        assert console.wait(timeout=10) == 0
    finally:
        console.kill()
        console.wait()
        assert console.stderr is not None
        console.stderr.close()
        os.close(controller)


def test_two_nics_writable_share_and_the_queue_step_restores_pairs(
    vmrun: Vmrun, tmp_path: Path, reachable_tmp: Path
) -> None:
    data = tomllib.loads(TINY.read_text())
    data.pop("kubevirt")  # its sources name the checked-in spec's disks and shares, which this spec replaces
    share = reachable_tmp
    (share / "from-host.txt").write_text("written on the host\n")
    data.update(
        name="tiny2",
        boot={**data["boot"], "kernel": str(IMAGES / "vmlinuz"), "initrd": str(IMAGES / "initrd.gz")},
        disks=[{**data["disks"][0], "path": str(tmp_path / "data.raw")}],
        nics=[{"id": "net0", "queues": 2}, {"id": "single", "queues": 1}],
        shares=[{"id": "work", "path": str(share), "tag": "work"}],
        post_boot=[{"run": ["sh", "-c", "echo from a hook > /mnt/work/from-hook.txt"]}],
    )
    spec_path = vmrun.spec(tomli_w.dumps(data), "tiny2.toml")
    up = vmrun("up", str(spec_path))
    try:
        assert up.returncode == 0, up.stderr
        assert re.search(r"^vmrun: ethtool net0 eth0 combined 2 ✓ \(already, \d+ ms\)$", up.stderr, re.MULTILINE)
        assert "vmrun: ethtool single combined 1 ✓ (one queue pair: nothing to set)" in up.stderr.splitlines()
        # The hook runs last, in the guest, where it sees the share.
        assert up.stderr.splitlines()[-2] == "vmrun: post_boot[0] sh -c 'echo from a hook > /mnt/work/from-hook.txt' ✓"
        assert (share / "from-hook.txt").read_text() == "from a hook\n"
        assert guest(vmrun, "tiny2", "cat", "/mnt/work/from-host.txt") == "written on the host\n"
        guest(vmrun, "tiny2", "sh", "-c", "echo from guest > /mnt/work/from-guest.txt")
        assert (share / "from-guest.txt").read_text() == "from guest\n"
        # The single-queue NIC has no multiqueue: one combined channel at most.
        assert current_combined(guest(vmrun, "tiny2", "ethtool", "-l", "eth1")) == 1

        # Undo what the step did, then run the step again: it must set the pairs, not just observe them.
        guest(vmrun, "tiny2", "ethtool", "-L", "eth0", "combined", "1")
        assert current_combined(guest(vmrun, "tiny2", "ethtool", "-l", "eth0")) == 1
        spec = validate(load_spec(spec_path), spec_path)
        said: list[str] = []
        with GuestAgent(vmrun.run_root / "tiny2" / "qga.sock") as agent:
            agent.wait_ready(timeout=10)
            run_multiqueue_step(agent, spec, said.append)
        assert len(said) == 2 and re.fullmatch(r"ethtool net0 eth0 combined 2 ✓ \(set, \d+ ms\)", said[0]), said
        assert said[1] == "ethtool single combined 1 ✓ (one queue pair: nothing to set)", said
        assert current_combined(guest(vmrun, "tiny2", "ethtool", "-l", "eth0")) == 2
    finally:
        down = vmrun("down", "tiny2")
        assert down.returncode == 0, down.stderr
        assert down.stderr.splitlines()[-1] == "vmrun: tiny2 stopped (ACPI powerdown)"
