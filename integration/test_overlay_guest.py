"""Overlays on a base image and the cloud-init seed, with real qemu: the tiny guest writes its disks, the base
stays as it was; bad bases and seeds are refused by the command line before anything is made."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tomllib
from pathlib import Path

import pytest
import tomli_w

from .conftest import REPO, Vmrun

TINY = REPO / "specs" / "tiny.toml"
IMAGES = REPO / "images" / "tiny"
BASE_CONTENT = b"the base image's first sector\n"
MIB = 2**20


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_base(path: Path) -> Path:
    """A raw 8 MiB base with something to recognise in its first sector."""
    with open(path, "wb") as file:
        file.write(BASE_CONTENT)
        file.truncate(8 * MIB)
    return path


def tiny_spec(vmrun: Vmrun, name: str, *, disks: list[dict[str, object]], nic: bool = False,
              **sections: object) -> Path:
    """specs/tiny.toml with other disks, and its NIC only when asked for."""
    data = tomllib.loads(TINY.read_text())
    data.pop("kubevirt")  # its sources name the checked-in spec's disks and shares, which this spec replaces
    if not nic:
        data.pop("nics")
    data.update(
        name=name,
        boot={**data["boot"], "kernel": str(IMAGES / "vmlinuz"), "initrd": str(IMAGES / "initrd.gz")},
        disks=disks, **sections,
    )
    return vmrun.spec(tomli_w.dumps(data), f"{name}.toml")


def guest(vmrun: Vmrun, name: str, script: str) -> str:
    result = vmrun("exec", name, "--", "/bin/sh", "-c", script)
    assert result.returncode == 0, f"{script}: {result.stderr}"
    return result.stdout


@pytest.mark.skipif(not (IMAGES / "vmlinuz").exists(), reason="tiny guest not built: run integration/tiny-guest/build")
def test_guest_writes_reach_the_overlays_never_the_base_and_down_deletes_only_the_ephemeral_one(
    vmrun: Vmrun, reachable_tmp: Path
) -> None:
    base = make_base(reachable_tmp / "base.raw")
    kept, scratch = reachable_tmp / "kept.qcow2", reachable_tmp / "scratch.qcow2"
    user_data = vmrun.spec("#cloud-config\nwrite_files: []\n", "user-data.yaml")
    spec = tiny_spec(vmrun, "ovl", disks=[
        {"id": "kept", "path": str(kept), "base": str(base), "format": "qcow2", "size": "16M"},
        {"id": "scratch", "path": str(scratch), "base": str(base), "format": "qcow2", "ephemeral": True},
    ], cloud_init={"user_data": str(user_data)}, nic=True)
    before = sha256(base)
    up = vmrun("up", str(spec))
    try:
        assert up.returncode == 0, up.stderr
        for overlay in (kept, scratch):
            info = json.loads(qemu_img("info", "-U", "--output=json", str(overlay)).stdout)
            assert (info["format"], info["full-backing-filename"]) == ("qcow2", str(base))
        # Both disks show the base's content through their overlays; the kept one is 16M, the other the base's 8M.
        for target, sectors in ((0, 16 * MIB // 512), (1, 8 * MIB // 512)):
            # By SCSI target: the kernel names the disks in the order their probes end, which varies.
            device = guest(vmrun, "ovl", f"ls /sys/bus/scsi/devices/*:0:{target}:0/block").strip()
            assert guest(vmrun, "ovl", f"cat /sys/block/{device}/size").strip() == str(sectors)
            first = guest(vmrun, "ovl", f"dd if=/dev/{device} bs=512 count=1 2>/dev/null | head -c {len(BASE_CONTENT)}")
            assert first.encode() == BASE_CONTENT
            guest(vmrun, "ovl", f"echo written by the guest | dd of=/dev/{device} conv=fsync 2>/dev/null")
        # The seed is a CD-ROM (SCSI type 5) on the same controller, after the two disks.
        assert guest(vmrun, "ovl", "cat /sys/bus/scsi/devices/*:0:2:0/type").strip() == "5"
        assert qemu_img("compare", "-U", "-q", str(base), str(kept)).returncode == 1  # the overlay differs now
        assert sha256(base) == before
        # status shows the guest's addresses as its agent reports them, loopback left out.
        guest(vmrun, "ovl", "ip link set eth0 up && ip addr add 192.0.2.7/24 dev eth0")
        [status] = json.loads(vmrun("status", "-a", "--json", "ovl").stdout)
        assert "192.0.2.7/24" in status["addresses"]["eth0"] and "lo" not in status["addresses"]
        assert "eth0 192.0.2.7/24" in vmrun("status", "-a", "ovl").stdout
    finally:
        down = vmrun("down", "ovl")
        assert down.returncode == 0, down.stderr
    assert kept.exists() and not scratch.exists()
    assert qemu_img("compare", "-q", str(base), str(kept)).returncode == 1
    assert sha256(base) == before


def refused(vmrun: Vmrun, spec: Path) -> tuple[int, list[str]]:
    """up's exit code and its error lines."""
    result = vmrun("up", str(spec))
    assert "Traceback" not in result.stderr
    return result.returncode, [line for line in result.stderr.splitlines() if line.startswith("vmrun: error: ")]


def test_bad_bases_and_seeds_give_one_line_each_and_make_nothing(vmrun: Vmrun, reachable_tmp: Path) -> None:
    base = make_base(reachable_tmp / "base.raw")
    notes = reachable_tmp / "notes.txt"
    notes.write_text("not a disk image\n")
    elsewhere = make_base(reachable_tmp / "elsewhere.raw")
    on_elsewhere = reachable_tmp / "on-elsewhere.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-b", str(elsewhere), "-F", "raw", str(on_elsewhere)).returncode == 0
    overlay = reachable_tmp / "overlay.qcow2"
    listing = sorted(path.name for path in reachable_tmp.iterdir())

    def disk(**changes: object) -> list[dict[str, object]]:
        return [{"id": "root", "path": str(overlay), "base": str(base), "format": "qcow2", **changes}]

    cases = [
        (tiny_spec(vmrun, "notdisk", disks=disk(base=str(notes))), 3,
         f"preflight: disks root: base {notes} is not a disk image: a raw image is whole 512-byte sectors, "
         "it has 17 bytes"),
        (tiny_spec(vmrun, "small", disks=disk(size="4M")), 3,
         f"preflight: disks root: size 4M is below the virtual size of base {base} (8M): an overlay cannot "
         "shrink its base"),
        (tiny_spec(vmrun, "wrong", disks=disk(path=str(on_elsewhere))), 3,
         f"preflight: disks root: {on_elsewhere} is an overlay on {elsewhere}, not on {base}: delete "
         f"{on_elsewhere} to recreate it on {base}, or point base at {elsewhere}"),
        (tiny_spec(vmrun, "rawbase", disks=disk(format="raw")), 2,
         'disks[0].format: an overlay on base is a qcow2 image: format must be "qcow2", not "raw"'),
        (tiny_spec(vmrun, "noseed", disks=disk(), cloud_init={"user_data": str(reachable_tmp / "nope.yaml")}), 2,
         f"cloud_init.user_data: {reachable_tmp}/nope.yaml: no such file"),
    ]
    for spec, code, message in cases:
        prefix = "" if code == 3 else f"{spec}: "
        assert refused(vmrun, spec) == (code, [f"vmrun: error: {prefix}{message}"])
    assert sorted(path.name for path in reachable_tmp.iterdir()) == listing
    assert not (vmrun.spec_dir / "state").exists()
