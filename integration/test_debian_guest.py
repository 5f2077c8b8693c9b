"""specs/debian.toml end to end: a real Debian 12 boots from an overlay on its image (UEFI, TCG here) and
cloud-init sets it up from vmrun's seed; the image itself is never written."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from vmrun.hooks import current_combined
from vmrun.load import load_spec
from vmrun.naming import mac_address
from vmrun.spec import Spec

from .conftest import REPO, Vmrun

DEBIAN = REPO / "specs" / "debian.toml"
NAME = "debian-it"  # not "debian": a VM someone runs from specs/debian.toml on this host keeps its tap

SPEC = load_spec(DEBIAN)
BASE = SPEC.disks[0].base
assert BASE is not None

pytestmark = pytest.mark.skipif(
    not BASE.exists(), reason=f"Debian guest not built: run integration/debian-guest/build ({BASE} is missing)"
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def guest(vmrun: Vmrun, *command: str, timeout: str = "60") -> str:
    result = vmrun("exec", "--timeout", timeout, NAME, "--", *command)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture
def debian(vmrun: Vmrun, reachable_tmp: Path) -> Iterator[tuple[Spec, str]]:
    """specs/debian.toml as checked in, but with its overlay in a temporary directory, gone at down;
    the image's hash is the same after down as before up."""
    data = tomllib.loads(DEBIAN.read_text())
    overlay = reachable_tmp / "debian-root.qcow2"
    assert SPEC.cloud_init is not None
    data.update(
        name=NAME,
        disks=[{**data["disks"][0], "path": str(overlay), "base": str(BASE), "ephemeral": True}],
        cloud_init={"user_data": str(SPEC.cloud_init.user_data), "network_config": str(SPEC.cloud_init.network_config)},
        # A first boot takes 40-50 s on an idle 2-core host; the tests of other branches may share it.
        agent={**data["agent"], "timeout": "900s"},
    )
    spec = vmrun.spec(tomli_w.dumps(data), "debian.toml")
    before = sha256(BASE)
    up = vmrun("up", str(spec), timeout=600)
    try:
        assert up.returncode == 0, up.stderr
        yield load_spec(spec), up.stderr
    finally:
        down = vmrun("down", NAME, "--timeout", "120")
        assert down.returncode == 0, down.stderr
        assert f"{NAME} stopped (ACPI powerdown)" in down.stderr, down.stderr
    assert not overlay.exists()
    assert sha256(BASE) == before


def test_debian_boots_from_its_overlay_and_cloud_init_applies_the_seed(
    vmrun: Vmrun, debian: tuple[Spec, str]
) -> None:
    spec, up = debian
    assert re.search(r"ethtool net0 \S+ combined 2 ✓", up), up
    assert "status: done" in guest(vmrun, "cloud-init", "status", "--wait", timeout="300")
    assert guest(vmrun, "cat", "/etc/vmrun-seeded") == "written by cloud-init from vmrun's seed\n"
    assert guest(vmrun, "id", "-un", "vmrun-demo").strip() == "vmrun-demo"
    assert "vmrun-demo test key" in guest(vmrun, "cat", "/home/vmrun-demo/.ssh/authorized_keys")
    # The instance is the seed's: meta-data's local-hostname is the VM's name.
    assert guest(vmrun, "hostname").strip() == NAME
    assert guest(vmrun, "findmnt", "-n", "-o", "SOURCE", "/").startswith("/dev/sda")
    found = guest(vmrun, "sh", "-c", f"grep -l {mac_address(spec, spec.nics[0])} /sys/class/net/*/address")
    interface = found.strip().split("/")[4]  # /sys/class/net/IF/address
    assert current_combined(guest(vmrun, "ethtool", "-l", interface)) == 2
    assert guest(vmrun, "cat", "/mnt/hostshare/en-us") == Path("/usr/share/qemu/keymaps/en-us").read_text()
    # The network-config's static address, as `status` reports it from the agent.
    [status] = json.loads(vmrun("status", "--json", NAME).stdout)
    assert "192.0.2.2/24" in status["addresses"].get(interface, []), (status, guest(vmrun, "ip", "-br", "addr"))
