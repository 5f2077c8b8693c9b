"""Many guests per host: eight tiny guests from one directory with one `vmrun up DIR`, on a 2-core host."""

from __future__ import annotations

import json
import os
import re
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


def summary(fates: dict[str, str]) -> str:
    """The last line of a command on many VMs: each VM's fate, in the order of their spec files."""
    return f"vmrun: {len(fates)} VMs: " + ", ".join(f"{name} {fate}" for name, fate in fates.items())


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
        lines = up.stderr.splitlines()
        for name in names:
            [ethtool] = [line for line in lines if line.startswith(f"vmrun: {name}: ethtool ")]
            assert ethtool == f"vmrun: {name}: ethtool net0 combined 1 ✓ (one queue pair: nothing to set)"
            [agent] = [line for line in lines if line.startswith(f"vmrun: {name}: guest agent ready after")]
            assert re.fullmatch(rf"vmrun: {name}: guest agent ready after \d+\.\d s", agent)
        assert lines[-1] == summary(dict.fromkeys(names, "started"))
        statuses = json.loads(vmrun("status", "--json").stdout)
        assert [(vm["name"], vm["state"]) for vm in statuses] == [(name, "running") for name in names]
        assert vmrun("diff", str(fleet)).returncode == 0  # the host holds what each VM was started with
        for name in names:
            assert Path(f"/sys/class/net/{name}.net0").exists()
        pids = {vm["name"]: vm["pid"] for vm in statuses}

        # The directory again: nothing changes.
        again = vmrun("up", str(fleet), timeout=300)
        assert again.returncode == 0, again.stderr
        # The VMs answer in parallel, so in any order; the summary keeps the order of the spec files.
        *each, last = again.stderr.splitlines()
        assert (sorted(each), last) == (
            [f"vmrun: {name}: {name}: up to date" for name in names], summary(dict.fromkeys(names, "up to date")))
        assert pids_of(vmrun) == pids

        # Drift in one spec: diff names exactly that VM and field; up refuses it and touches nothing.
        edited = names[3]
        bigger = {**tiny_guest(edited), "machine": {"cpus": 1, "memory": "288M"}}
        (fleet / f"{edited}.toml").write_text(tomli_w.dumps(bigger))
        diff = vmrun("diff", str(fleet))
        assert (diff.returncode, diff.stderr) == (6, "")
        assert diff.stdout.splitlines() == [
            *(f"{name}: up to date" for name in names[:3]), f"{edited}: differs", "  machine.memory: 256M → 288M",
            *(f"{name}: up to date" for name in names[4:]),
        ]
        refused = vmrun("up", str(fleet), timeout=300)
        assert refused.returncode == 2
        assert f"vmrun: error: {edited}: {edited} runs with another configuration: machine.memory: 256M → 288M" \
            in refused.stderr.splitlines()
        assert refused.stderr.splitlines()[-1] == summary(
            {name: "failed (exit 2)" if name == edited else "up to date" for name in names})
        assert pids_of(vmrun) == pids

        restarted = vmrun("up", "--restart", str(fleet), timeout=600)
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stderr.splitlines()[-1] == summary(
            {name: "restarted" if name == edited else "up to date" for name in names})
        after = pids_of(vmrun)
        assert after[edited] != pids[edited]
        assert {name: pid for name, pid in after.items() if name != edited} == {
            name: pid for name, pid in pids.items() if name != edited}
        again = vmrun("diff", str(fleet))
        assert (again.returncode, again.stdout.splitlines()) == (0, [f"{name}: up to date" for name in names])
    finally:
        down = vmrun("down", "--all", timeout=600)
    assert down.returncode == 0, down.stderr
    assert down.stderr.splitlines()[-1] == summary(dict.fromkeys(names, "stopped (ACPI powerdown)"))
    for name in names:
        assert not Path(f"/sys/class/net/{name}.net0").exists()
    assert json.loads(vmrun("status", "--json").stdout) == []
