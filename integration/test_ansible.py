"""The Ansible collection vmrun.fleet for real: the README's playbook run by ansible-core against two hosts that
are this machine (local connections, each with its own run and state roots), two guest-less VMs each."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import yaml
from ansible.release import __version__ as ansible_version

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


COLLECTION = REPO / "ansible" / "collections" / "ansible_collections" / "vmrun" / "fleet"


@attrs.frozen
class Fleet:
    root: Path

    @property
    def vmrun_bin(self) -> Path:
        """This checkout's vmrun (python -m vmrun from it, whatever the venv's vmrun points at)."""
        return self.root / "bin" / "vmrun"

    def host_root(self, host: str) -> Path:
        return self.root / "hosts" / host

    def spec(self, host: str, vm: str) -> Path:
        return self.root / "fleet" / host / f"{vm}.toml"

    def playbook(self, *args: str, playbook: str = "site.yml") -> Run:
        tree = self.root / "tree"
        shutil.rmtree(tree, ignore_errors=True)
        env = {
            **os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / "ansible" / "collections"),
            "ANSIBLE_HOME": str(self.root / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(self.root / "ansible-tmp"),
            "ANSIBLE_CONFIG": str(self.root / "no-ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CALLBACKS_ENABLED": "tree", "ANSIBLE_CALLBACK_TREE_DIR": str(tree),
        }
        done = subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventory.ini", playbook, *args],
                              capture_output=True, text=True, timeout=300, cwd=self.root, env=env)
        recap = {host: (int(changed), int(failed)) for host, changed, failed in RECAP.findall(done.stdout)}
        results = {path.name: json.loads(path.read_text()) for path in tree.iterdir()} if tree.exists() else {}
        return Run(done.returncode, done.stdout + done.stderr, recap, results)

    def vmrun(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        root = self.host_root(host)
        return subprocess.run([str(self.vmrun_bin), "--run-dir", str(root / "run"), "--state-dir", str(root / "state"),
                               *args], capture_output=True, text=True, timeout=120)

    def pids(self, host: str) -> dict[str, int]:
        return {vm["name"]: vm["pid"] for vm in json.loads(self.vmrun(host, "status", "--json").stdout)}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Two hosts' spec directories, an inventory of two local hosts and the README's playbook, pointed at this
    checkout's vmrun and each host's roots; every VM is down at the end, whatever the test did."""
    fleet = Fleet(tmp_path)
    fleet.vmrun_bin.parent.mkdir()
    fleet.vmrun_bin.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} -m vmrun \"$@\"\n")
    fleet.vmrun_bin.chmod(0o755)
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
    roots = {"vmrun": str(fleet.vmrun_bin), "run_dir": "{{ vmrun_root }}/run", "state_dir": "{{ vmrun_root }}/state"}
    play["module_defaults"] = {"vmrun.fleet.vms": {
        **roots, "timeout": 1,  # a guest-less VM ignores the ACPI powerdown: quit after a second
    }}
    (tmp_path / "site.yml").write_text(yaml.safe_dump([play], sort_keys=False))
    info = {"name": "What runs on each host", "hosts": "vmhosts", "gather_facts": False,
            "module_defaults": {"vmrun.fleet.vms_info": roots},
            "tasks": [{"name": "Read it", "vmrun.fleet.vms_info": {"names": "{{ names | default(omit) }}"}}]}
    (tmp_path / "info.yml").write_text(yaml.safe_dump([info], sort_keys=False))
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
    diffs = sorted(re.findall(r"^--- before: (.*)\n\+\+\+ after: .*\n@@ .* @@\n((?:[ +-].*\n)+)", preview.stdout,
                              re.MULTILINE))  # the hosts in either order
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


# A remote shell for hosts that are this machine: it runs the command line it is given, whatever the host.
LOCAL_RSH = shlex.join(["env", "-u", "SSH_CONNECTION", "sh", "-c", 'exec sh -c "$2"', "rsh"])


def drain_play(fleet: Fleet, source: str, destination: str) -> None:
    """drain.yml: the source's VMs moved live to the destination, its vmrun with the destination's roots."""
    there = fleet.host_root(destination)
    remote = shlex.join([str(fleet.vmrun_bin), "--run-dir", str(there / "run"), "--state-dir", str(there / "state")])
    task = {"specs": "{{ vmrun_root }}/specs", "state": "migrated", "to": "127.0.0.1", "rsh": LOCAL_RSH,
            "remote_vmrun": remote, "timeout": 120, "vmrun": str(fleet.vmrun_bin), "run_dir": "{{ vmrun_root }}/run",
            "state_dir": "{{ vmrun_root }}/state"}
    play = {"name": "Drain", "hosts": source, "gather_facts": False,
            "tasks": [{"name": "Move its VMs", "vmrun.fleet.vms": task}]}
    (fleet.root / "drain.yml").write_text(yaml.safe_dump([play], sort_keys=False))


def test_state_migrated_drains_a_host_live_and_check_mode_says_what_would_move(fleet: Fleet) -> None:
    up = fleet.playbook("--limit", "h1")
    assert up.returncode == 0, up.stdout
    pids = fleet.pids("h1")
    drain_play(fleet, "h1", "h2")

    check = fleet.playbook("--check", "--diff", playbook="drain.yml")
    assert (check.returncode, check.recap) == (0, {"h1": (1, 0)}), check.stdout
    assert [entry["outcome"] for entry in check.results["h1"]["vms"]] == ["would migrate to 127.0.0.1"] * 2
    assert "-a: running here\n-b: running here\n+a: runs on 127.0.0.1\n+b: runs on 127.0.0.1\n" in check.stdout
    assert (fleet.pids("h1"), fleet.pids("h2")) == (pids, {})  # nothing moved

    drained = fleet.playbook(playbook="drain.yml")
    assert (drained.returncode, drained.recap) == (0, {"h1": (1, 0)}), drained.stdout
    assert drained.vms("h1") == {"a": "migrated", "b": "migrated"}
    assert fleet.pids("h1") == {} and sorted(fleet.pids("h2")) == ["a", "b"]
    assert [vm["state"] for vm in json.loads(fleet.vmrun("h2", "status", "--json").stdout)] == ["running"] * 2

    again = fleet.playbook(playbook="drain.yml")
    assert (again.returncode, again.recap) == (0, {"h1": (0, 0)}), again.stdout
    assert again.vms("h1") == {"a": "not here", "b": "not here"}


def test_state_migrated_without_to_is_refused_and_moves_nothing(fleet: Fleet) -> None:
    assert fleet.playbook("--limit", "h1").returncode == 0
    drain_play(fleet, "h1", "h2")
    (fleet.root / "drain.yml").write_text((fleet.root / "drain.yml").read_text().replace("to: 127.0.0.1", "to: ''"))
    refused = fleet.playbook(playbook="drain.yml")
    assert refused.returncode == 2 and "state=migrated needs to: the host to move the VMs to" in refused.stdout
    assert sorted(fleet.pids("h1")) == ["a", "b"]


def results(run: Run, host: str) -> list[tuple[str, str]]:
    entries = run.results[host]["vms"]
    assert isinstance(entries, list)
    return [(entry["name"], entry["result"]) for entry in entries]


def test_check_mode_predicts_the_real_run_when_a_spec_parses_but_is_invalid(fleet: Fleet) -> None:
    assert fleet.playbook().returncode == 0
    pids = {host: fleet.pids(host) for host in HOSTS}
    # h2's b, running, gets a spec that parses (down reads its name from it) but does not validate.
    fleet.spec("h2", "b").write_text(fleet.spec("h2", "b").read_text().replace("cpus = 1", "cpus = 0"))
    path = f"{fleet.host_root('h2')}/specs/b.toml"
    error = f"{path}: machine.cpus: must be at least 1, got 0"

    # present: up refuses the invalid spec and leaves b running; check mode says so, VM by VM, and fails as up does.
    # (-vvv: Ansible shows no diff of a failed task, and keeps it in the result only from that verbosity on.)
    check = fleet.playbook("--check", "--diff", "-vvv")
    real = fleet.playbook("--diff", "-vvv")
    for run, copied in ((check, 1), (real, 0)):
        assert (run.returncode, run.recap) == (2, {"h1": (0, 0), "h2": (copied, 1)}), run.stdout  # h2's copy
        assert results(run, "h2") == [(path, "invalid"), ("a", "up to date")]
        assert run.results["h2"]["vms"][0]["errors"] == [error]
        assert run.results["h2"]["msg"] == error
        # The diff lists the spec up leaves out, and why.
        assert run.results["h2"]["diff"]["prepared"] == f"left out by vmrun up:\n{path}: invalid spec\n  {error}\n"
        assert run.results["h2"]["diff"]["before"] == run.results["h2"]["diff"]["after"] == "a: up to date\n"
    assert check.results["h2"]["vms"] == real.results["h2"]["vms"]
    assert {host: fleet.pids(host) for host in HOSTS} == pids

    # absent: down stops b too (it needs only the name); check mode predicts it, the diff lists both VMs.
    preview = fleet.playbook("-e", "vms_state=absent", "--check", "--diff")
    assert (preview.returncode, preview.recap) == (0, {"h1": (1, 0), "h2": (1, 0)}), preview.stdout
    assert [results(preview, host) for host in HOSTS] == [[("a", "stopped"), ("b", "stopped")]] * 2
    diffs = sorted(re.findall(r"^--- before: (.*)\n\+\+\+ after: .*\n@@ .* @@\n((?:[ +-].*\n)+)", preview.stdout,
                              re.MULTILINE))  # the hosts in either order
    assert diffs == [(f"{fleet.host_root(host)}/specs", "-a: running\n-b: running\n+a: not running\n+b: not running\n")
                     for host in HOSTS]
    assert {host: fleet.pids(host) for host in HOSTS} == pids
    absent = fleet.playbook("-e", "vms_state=absent", "--diff")
    assert (absent.returncode, absent.recap) == (0, {"h1": (1, 0), "h2": (1, 0)}), absent.stdout
    assert [results(absent, host) for host in HOSTS] == [results(preview, host) for host in HOSTS]
    assert sorted(re.findall(r"^--- before: (.*)\n\+\+\+ after: .*\n@@ .* @@\n((?:[ +-].*\n)+)", absent.stdout,
                             re.MULTILINE)) == diffs
    assert [fleet.pids(host) for host in HOSTS] == [{}, {}]

    # A spec that names no VM fails down before it stops anything, and check mode alike.
    assert fleet.playbook().returncode == 2  # h1's VMs up again (h2's b stays invalid)
    running = {host: fleet.pids(host) for host in HOSTS}
    fleet.spec("h1", "b").write_text(fleet.spec("h1", "b").read_text().replace('name = "b"', 'name = "B!"'))
    for args, copied in ((("--check",), 1), ((), 0)):  # h2 stops its a (check mode: would)
        refused = fleet.playbook("-e", "vms_state=absent", *args)
        assert (refused.returncode, refused.recap) == (2, {"h1": (copied, 1), "h2": (1, 0)}), refused.stdout
        assert refused.results["h1"]["msg"] == (
            f"{fleet.host_root('h1')}/specs/b.toml: name: 'B!' is not a valid VM name")
        assert fleet.pids("h1") == running["h1"]


def test_restart_with_state_absent_is_refused_and_stops_nothing(fleet: Fleet) -> None:
    assert fleet.playbook().returncode == 0
    pids = {host: fleet.pids(host) for host in HOSTS}
    for args in (("--check",), ()):
        refused = fleet.playbook("-e", "vms_state=absent", "-e", "restart=true", *args)
        assert (refused.returncode, refused.recap) == (2, {"h1": (0, 1), "h2": (0, 1)}), refused.stdout
        for host in HOSTS:
            assert refused.results[host]["msg"] == ("restart=true needs state=present (vmrun up --restart): "
                                                    "state=absent stops the VMs (vmrun down) and restarts none")
            assert refused.results[host]["vms"] == []
        assert {host: fleet.pids(host) for host in HOSTS} == pids
    # restart=false (the README playbook's default) with absent still stops them.
    assert fleet.playbook("-e", "vms_state=absent", "-e", "restart=false").returncode == 0
    assert [fleet.pids(host) for host in HOSTS] == [{}, {}]


def test_vms_info_reads_what_runs_where_and_changes_nothing(fleet: Fleet) -> None:
    empty = fleet.playbook(playbook="info.yml")
    assert (empty.returncode, empty.recap) == (0, {"h1": (0, 0), "h2": (0, 0)}), empty.stdout
    assert [(empty.results[host]["vms"], empty.results[host]["missing"]) for host in HOSTS] == [([], [])] * 2

    fleet.spec("h2", "b").unlink()  # h2 runs only a
    assert fleet.playbook().returncode == 0
    pids = {host: fleet.pids(host) for host in HOSTS}
    for args in ((), ("--check",)):
        info = fleet.playbook(*args, playbook="info.yml")
        assert (info.returncode, info.recap) == (0, {"h1": (0, 0), "h2": (0, 0)}), info.stdout
        for host in HOSTS:
            vms = info.results[host]["vms"]
            assert isinstance(vms, list)
            assert {vm["name"]: (vm["state"], vm["pid"], vm["accel"], vm["run_dir"]) for vm in vms} == {
                name: ("running", pid, "tcg", f"{fleet.host_root(host)}/run/{name}")
                for name, pid in pids[host].items()}
    assert sorted(pids["h2"]) == ["a"]

    some = fleet.playbook("-e", '{"names": ["b", "nosuch"]}', playbook="info.yml")
    assert some.returncode == 0, some.stdout
    assert [([vm["name"] for vm in some.results[host]["vms"]], some.results[host]["missing"]) for host in HOSTS] == [
        (["b"], ["nosuch"]), ([], ["b", "nosuch"])]
    assert {host: fleet.pids(host) for host in HOSTS} == pids


def test_the_built_collection_ships_its_license_changelog_and_project_links(tmp_path: Path) -> None:
    built = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", str(COLLECTION), "--output-path",
                            str(tmp_path)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home")})
    assert built.returncode == 0, built.stderr
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())
    [tarball] = tmp_path.glob("vmrun-fleet-*.tar.gz")
    assert tarball.name == f"vmrun-fleet-{galaxy['version']}.tar.gz"
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
        text = {name: archive.extractfile(name).read().decode() for name in  # type: ignore[union-attr]
                ("LICENSE", "MANIFEST.json", "changelogs/changelog.yaml")}
    assert {"plugins/modules/vms.py", "plugins/modules/vms_info.py", "plugins/module_utils/vmrun.py",
            "plugins/doc_fragments/vmrun.py"} <= names
    # MIT asks for the notice to ship with the code.
    assert text["LICENSE"].startswith("MIT License\n\nCopyright (c) the vmrun authors\n")
    assert "Permission is hereby granted, free of charge" in text["LICENSE"]
    assert 'license = "MIT"' in (REPO / "pyproject.toml").read_text()
    info = json.loads(text["MANIFEST.json"])["collection_info"]
    assert info["license"] == ["MIT"]
    assert all(info[key].startswith("https://") for key in ("repository", "documentation", "issues"))
    # The changelog (antsibull-changelog's format) has the version galaxy.yml builds, and vms_info in it.
    changelog = yaml.safe_load(text["changelogs/changelog.yaml"])
    assert galaxy["version"] in changelog["releases"]
    assert {"name": "vms_info", "namespace": "", "description": "What vmrun runs on a host, from vmrun status"} in \
        [module for release in changelog["releases"].values() for module in release.get("modules", [])]


def test_sanity_ignore_files_cover_every_ansible_the_collection_admits() -> None:
    runtime = yaml.safe_load((COLLECTION / "meta" / "runtime.yml").read_text())
    [minimum] = re.fullmatch(r">=(2\.\d+)\.0", runtime["requires_ansible"]).groups()  # type: ignore[union-attr]
    files = {path.name: path.read_text() for path in (COLLECTION / "tests" / "sanity").glob("ignore-*.txt")}
    newest = max([int(name.split(".")[1]) for name in files] + [int(ansible_version.split(".")[1])])
    assert sorted(files) == sorted(f"ignore-2.{minor}.txt" for minor in range(int(minimum.split(".")[1]), newest + 1))
    assert len(set(files.values())) == 1  # the same reasons for every version
