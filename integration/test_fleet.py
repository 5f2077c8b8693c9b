"""Many guests per host: eight tiny guests from one directory with one `vmrun up DIR`, on a 2-core host."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tomli_w

from .conftest import REPO, Vmrun

IMAGES = REPO / "images" / "tiny"
GUESTS = 8
# Eight TCG guests share two cores, so each boots several times slower than alone (about 8 s alone).
AGENT_TIMEOUT = "600s"

pytestmark = pytest.mark.skipif(
    not (IMAGES / "vmlinuz").exists(), reason="tiny guest not built: run integration/tiny-guest/build"
)


def tiny_guest(name: str) -> dict[str, object]:
    return {
        "name": name,
        "machine": {"cpus": 1, "memory": "256M"},
        "boot": {"kernel": str(IMAGES / "vmlinuz"), "initrd": str(IMAGES / "initrd.gz"),
                 "append": "console=ttyS0 quiet"},
        "nics": [{"id": "net0"}],  # a derived tap each: "<name>.net0"
        "shares": [{"id": "keymaps", "path": "/usr/share/qemu/keymaps", "tag": "keymaps", "readonly": True}],
        "agent": {"timeout": AGENT_TIMEOUT},
    }


def pids_of(vmrun: Vmrun) -> dict[str, int]:
    return {vm["name"]: vm["pid"] for vm in json.loads(vmrun("status", "--json").stdout)}


def test_eight_guests_from_one_directory_come_up_stay_up_to_date_restart_on_drift_and_go_down(
    vmrun: Vmrun,
) -> None:
    fleet = vmrun.spec_dir / "fleet"
    fleet.mkdir()
    names = [f"f{os.getpid() % 10000}-{index}" for index in range(GUESTS)]
    for name in names:
        (fleet / f"{name}.toml").write_text(tomli_w.dumps(tiny_guest(name)))
    up = vmrun("up", str(fleet), timeout=900)
    try:
        assert up.returncode == 0, up.stderr
        for name in names:
            assert f"{name}: ethtool net0 eth0 combined 1 ✓" in up.stderr
            assert f"{name}: guest agent ready after" in up.stderr
        assert up.stderr.strip().splitlines()[-1].startswith(f"vmrun: {GUESTS} VMs: ")
        statuses = json.loads(vmrun("status", "--json").stdout)
        assert sorted(vm["name"] for vm in statuses) == sorted(names)
        assert {vm["state"] for vm in statuses} == {"running"}
        for name in names:
            assert Path(f"/sys/class/net/{name}.net0").exists()
        pids = {vm["name"]: vm["pid"] for vm in statuses}

        # The directory again: nothing changes.
        again = vmrun("up", str(fleet), timeout=300)
        assert again.returncode == 0, again.stderr
        assert again.stderr.count(": up to date") == GUESTS
        assert pids_of(vmrun) == pids

        # Drift in one spec: diff names exactly that VM and field; up refuses it and touches nothing.
        edited = names[3]
        bigger = {**tiny_guest(edited), "machine": {"cpus": 1, "memory": "288M"}}
        (fleet / f"{edited}.toml").write_text(tomli_w.dumps(bigger))
        diff = vmrun("diff", str(fleet))
        assert diff.returncode == 6
        assert [line for line in diff.stdout.splitlines() if "up to date" not in line] == [
            f"{edited}: differs", "  machine.memory: 256M → 288M",
        ]
        refused = vmrun("up", str(fleet), timeout=300)
        assert refused.returncode == 2
        assert f"{edited} runs with another configuration: machine.memory: 256M → 288M" in refused.stderr
        assert pids_of(vmrun) == pids

        restarted = vmrun("up", "--restart", str(fleet), timeout=600)
        assert restarted.returncode == 0, restarted.stderr
        after = pids_of(vmrun)
        assert after[edited] != pids[edited]
        assert {name: pid for name, pid in after.items() if name != edited} == {
            name: pid for name, pid in pids.items() if name != edited}
        assert vmrun("diff", str(fleet)).returncode == 0
    finally:
        down = vmrun("down", "--all", timeout=600)
    assert down.returncode == 0, down.stderr
    for name in names:
        assert f"{name} stopped (ACPI powerdown)" in down.stderr
        assert not Path(f"/sys/class/net/{name}.net0").exists()
    assert json.loads(vmrun("status", "--json").stdout) == []
