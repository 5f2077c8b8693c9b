"""specs/debian.toml end to end: a real Debian 12 boots from an overlay on its image (UEFI, TCG here) and
cloud-init sets it up from vmrun's seed; the image itself is never written."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
import yaml

from vmrun.guest.hooks import current_combined
from vmrun.spec.load import load_spec
from vmrun.spec.model import Spec

from .conftest import REPO, Vmrun

DEBIAN = REPO / "specs" / "debian.toml"
NAME = "debian-it"  # not "debian": a VM someone runs from specs/debian.toml on this host keeps its tap
USER_NIC_MAC = "52:54:00:de:b1:a1"

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def seed_files(directory: Path, public_key: str) -> dict[str, str]:
    """The checked-in seed files, plus the test's SSH key for vmrun-demo and a static address on the user-mode
    NIC (qemu's user network forwards to 10.0.2.15): [cloud_init] naming the copies."""
    assert SPEC.cloud_init is not None and SPEC.cloud_init.network_config is not None
    user_data = yaml.safe_load(SPEC.cloud_init.user_data.read_text())
    user_data["users"][1]["ssh_authorized_keys"].append(public_key)
    network = yaml.safe_load(SPEC.cloud_init.network_config.read_text())
    network["ethernets"]["user0"] = {"match": {"macaddress": USER_NIC_MAC}, "set-name": "user0",
                                     "addresses": ["10.0.2.15/24"]}
    (directory / "user-data.yaml").write_text("#cloud-config\n" + yaml.safe_dump(user_data))
    (directory / "network-config.yaml").write_text(yaml.safe_dump(network))
    return {"user_data": str(directory / "user-data.yaml"), "network_config": str(directory / "network-config.yaml")}


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmrun test", "-f", str(key)], check=True)
    return key


@pytest.fixture
def debian(vmrun: Vmrun, reachable_tmp: Path, ssh_key: Path) -> Iterator[tuple[Spec, str]]:
    """specs/debian.toml as checked in, but with its overlay in a temporary directory, gone at down, and a
    user-mode NIC (restrict on) forwarding a free host port to the guest's sshd; the image's hash is the same
    after down as before up."""
    data = tomllib.loads(DEBIAN.read_text())
    overlay = reachable_tmp / "debian-root.qcow2"
    data.update(
        name=NAME,
        disks=[{**data["disks"][0], "path": str(overlay), "base": str(BASE), "ephemeral": True}],
        nics=[*data["nics"], {"id": "user0", "mode": "user", "mac": USER_NIC_MAC, "restrict": True,
                              "forward": [f"tcp:127.0.0.1:{free_port()}:22"]}],
        cloud_init=seed_files(vmrun.spec_dir, Path(f"{ssh_key}.pub").read_text().strip()),
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
    vmrun: Vmrun, debian: tuple[Spec, str], ssh_key: Path
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
    found = guest(vmrun, "sh", "-c", f"grep -l {spec.nics[0].guest_mac} /sys/class/net/*/address")
    interface = found.strip().split("/")[4]  # /sys/class/net/IF/address
    assert current_combined(guest(vmrun, "ethtool", "-l", interface)) == 2
    assert guest(vmrun, "cat", "/mnt/hostshare/en-us") == Path("/usr/share/qemu/keymaps/en-us").read_text()
    # The network-config's static address, as `status` reports it from the agent.
    [status] = json.loads(vmrun("status", "-a", "--json", NAME).stdout)
    assert "192.0.2.2/24" in status["addresses"].get(interface, []), (status, guest(vmrun, "ip", "-br", "addr"))
    # ssh through the user-mode NIC's forward, as the user the user-data creates, the host key kept per VM.
    ssh = vmrun("ssh", "-i", str(ssh_key), NAME, "--", "id", "-un", timeout=120)
    assert (ssh.returncode, ssh.stdout) == (0, "vmrun-demo\n"), ssh.stderr
    known_hosts = vmrun.state_root / NAME / "known_hosts"  # hashed names (Debian's ssh_config): ask ssh-keygen
    port = spec.nics[1].forward[0].split(":")[2]
    assert subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{port}", "-f", str(known_hosts)]).returncode == 0
    assert vmrun("ssh", "-i", str(ssh_key), NAME, "--", "true", timeout=120).returncode == 0
