"""The Ansible collection vmrun.fleet for real: the README's playbook run by ansible-core against two hosts that
are this machine (local connections, each with its own run and state roots), two guest-less VMs each."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import yaml

from .conftest import REPO, qemu_pids_of
from .inlab import guestless_toml

HOSTS = ("h1", "h2")
VMS = ("a", "b")
BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", re.MULTILINE)


def readme_playbook() -> list[dict[str, object]]:
    """The playbook the README's Ansible section shows."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### A fleet of hosts: Ansible"):]
    [block] = re.findall(r"```yaml\n(# site\.yml.*?)```", section, re.DOTALL)[:1]
    playbook: list[dict[str, object]] = yaml.safe_load(block)
    return playbook


@attrs.frozen
class Run:
    returncode: int
    stdout: str
    recap: dict[str, tuple[int, int]]  # host: (changed, failed)
    results: dict[str, dict[str, object]]  # host: the vms task's result (the last task's)

    def vms(self, host: str) -> dict[str, str]:
        entries = self.results[host]["vms"]
        assert isinstance(entries, list)
        return {entry["name"]: entry["result"] for entry in entries}


@attrs.frozen
class Fleet:
    root: Path

    def host_root(self, host: str) -> Path:
        return self.root / "hosts" / host

    def spec(self, host: str, vm: str) -> Path:
        return self.root / "fleet" / host / f"{vm}.toml"

    def playbook(self, *args: str) -> Run:
        tree = self.root / "tree"
        shutil.rmtree(tree, ignore_errors=True)
        env = {
            **os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / "ansible" / "collections"),
            "ANSIBLE_HOME": str(self.root / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(self.root / "ansible-tmp"),
            "ANSIBLE_CONFIG": str(self.root / "no-ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CALLBACKS_ENABLED": "tree", "ANSIBLE_CALLBACK_TREE_DIR": str(tree),
        }
        done = subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventory.ini", "site.yml", *args],
                              capture_output=True, text=True, timeout=300, cwd=self.root, env=env)
        recap = {host: (int(changed), int(failed)) for host, changed, failed in RECAP.findall(done.stdout)}
        results = {path.name: json.loads(path.read_text()) for path in tree.iterdir()} if tree.exists() else {}
        return Run(done.returncode, done.stdout + done.stderr, recap, results)

    def vmrun(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        root = self.host_root(host)
        return subprocess.run([str(BIN / "vmrun"), "--run-dir", str(root / "run"), "--state-dir", str(root / "state"),
                               *args], capture_output=True, text=True, timeout=120)

    def pids(self, host: str) -> dict[str, int]:
        return {vm["name"]: vm["pid"] for vm in json.loads(self.vmrun(host, "status", "--json").stdout)}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Two hosts' spec directories, an inventory of two local hosts and the README's playbook, pointed at this
    checkout's vmrun and each host's roots; every VM is down at the end, whatever the test did."""
    fleet = Fleet(tmp_path)
    for host in HOSTS:
        for vm in VMS:
            fleet.spec(host, vm).parent.mkdir(parents=True, exist_ok=True)
            fleet.spec(host, vm).write_text(guestless_toml(vm))
            subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(fleet.spec(host, vm).with_suffix(".raw")),
                            "1M"], check=True)
    (tmp_path / "inventory.ini").write_text(
        "[vmhosts]\n"
        + "".join(f"{host} ansible_connection=local vmrun_root={fleet.host_root(host)}\n" for host in HOSTS)
        + "[vmhosts:vars]\nansible_python_interpreter=/usr/bin/python3\n"  # the module needs only the stdlib
    )
    [play] = readme_playbook()
    play["vars"] = {"specs": "{{ vmrun_root }}/specs"}
    play["module_defaults"] = {"vmrun.fleet.vms": {
        "vmrun": str(BIN / "vmrun"), "run_dir": "{{ vmrun_root }}/run", "state_dir": "{{ vmrun_root }}/state",
        "timeout": 1,  # a guest-less VM ignores the ACPI powerdown: quit after a second
    }}
    (tmp_path / "site.yml").write_text(yaml.safe_dump([play], sort_keys=False))
    yield fleet
    for host in HOSTS:
        fleet.vmrun(host, "down", "--all", "--force")
    left = qemu_pids_of(tmp_path)
    for pid in left:
        subprocess.run(["kill", "-9", str(pid)], check=False)
    assert not left, f"qemu left running: {left}"


def test_the_readme_playbook_applies_each_hosts_specs_idempotently_previews_restarts_and_stops(fleet: Fleet) -> None:
    first = fleet.playbook()
    assert first.returncode == 0, first.stdout
    assert first.recap == {"h1": (2, 0), "h2": (2, 0)}  # the copy and the VMs
    assert [first.vms(host) for host in HOSTS] == [{"a": "started", "b": "started"}] * 2
    pids = {host: fleet.pids(host) for host in HOSTS}
    assert [sorted(pids[host]) for host in HOSTS] == [list(VMS)] * 2

    again = fleet.playbook()
    assert (again.returncode, again.recap) == (0, {"h1": (0, 0), "h2": (0, 0)}), again.stdout
    assert [again.vms(host) for host in HOSTS] == [{"a": "up to date", "b": "up to date"}] * 2

    # An edit of h2's b: check mode fails h2 as up would refuse it, and with restart previews it; nothing changes.
    fleet.spec("h2", "b").write_text(fleet.spec("h2", "b").read_text().replace('memory = "64M"', 'memory = "96M"'))
    refused = fleet.playbook("--check", "--diff")
    assert (refused.returncode, refused.recap) == (2, {"h1": (0, 0), "h2": (1, 1)}), refused.stdout  # h2's copy
    message = "b runs with another configuration: machine.memory: 64M → 96M"
    assert "fatal: [h2]: FAILED! => " in refused.stdout and f'"msg": "{message}"' in refused.stdout
    assert refused.results["h2"]["vms"][1]["errors"] == [message]
    preview = fleet.playbook("--check", "--diff", "-e", "restart=true")
    assert (preview.returncode, preview.recap) == (0, {"h1": (0, 0), "h2": (1, 0)}), preview.stdout
    assert [preview.vms(host) for host in HOSTS] == [{"a": "up to date", "b": "up to date"},
                                                     {"a": "up to date", "b": "restarted"}]
    diffs = re.findall(r"^--- before: (.*)\n\+\+\+ after: .*\n@@ .* @@\n((?:[ +-].*\n)+)", preview.stdout, re.MULTILINE)
    assert diffs == [(f"{fleet.host_root('h2')}/specs",
                      " a: up to date\n-b: differs\n-  machine.memory: 64M → 96M\n+b: up to date\n")]
    assert {host: fleet.pids(host) for host in HOSTS} == pids
    assert fleet.vmrun("h2", "diff", f"{fleet.host_root('h2')}/specs").returncode == 6

    restarted = fleet.playbook("-e", "restart=true")
    assert (restarted.returncode, restarted.recap) == (0, {"h1": (0, 0), "h2": (1, 0)}), restarted.stdout
    assert restarted.vms("h2") == {"a": "up to date", "b": "restarted"}
    now = {host: fleet.pids(host) for host in HOSTS}
    assert now["h1"] == pids["h1"] and now["h2"]["a"] == pids["h2"]["a"] and now["h2"]["b"] != pids["h2"]["b"]

    absent = fleet.playbook("-e", "vms_state=absent")
    assert (absent.returncode, absent.recap) == (0, {"h1": (1, 0), "h2": (1, 0)}), absent.stdout
    assert [absent.vms(host) for host in HOSTS] == [{"a": "stopped", "b": "stopped"}] * 2
    assert [fleet.pids(host) for host in HOSTS] == [{}, {}]
    assert qemu_pids_of(fleet.root) == []
    assert [sorted(path.name for path in (fleet.host_root(host) / "run").iterdir()) for host in HOSTS] == [
        [".locks"]] * 2  # lock files stay by design; no run directory
    gone = fleet.playbook("-e", "vms_state=absent", "--check")
    assert (gone.returncode, gone.recap) == (0, {"h1": (0, 0), "h2": (0, 0)}), gone.stdout
    assert [gone.vms(host) for host in HOSTS] == [{"a": "not running", "b": "not running"}] * 2
