"""`vmrun migrate` between two hosts on one machine: two network namespaces of the test's own joined by a veth
pair, an sshd in each, and a run root per side. The tiny guest moves live (no reboot) and back."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

from .conftest import REPO, Vmrun, qemu_pids_of

IMAGES = REPO / "images" / "tiny"
SUBNET = "10.213.7"  # a /30 of the test's own: .1 the first host, .2 the second

pytestmark = pytest.mark.skipif(
    not (IMAGES / "vmlinuz").exists() or not Path("/usr/sbin/sshd").exists(),
    reason="needs the tiny guest (integration/tiny-guest/build) and openssh-server (integration/setup-host)",
)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


@attrs.frozen
class Side:
    """One host: a network namespace with an sshd, and vmrun there with its own run and state roots."""

    netns: str
    address: str
    vmrun: Vmrun

    def has_tap(self, tap: str) -> bool:
        return run("ip", "netns", "exec", self.netns, "ip", "link", "show", tap, check=False).returncode == 0

    def remote_vmrun(self) -> str:
        """--remote-vmrun for a migration to this side."""
        return shlex.join(["env", f"PYTHONPATH={REPO}", f"VMRUN_RUN_DIR={self.vmrun.run_root}",
                           f"VMRUN_STATE_DIR={self.vmrun.state_root}", sys.executable, "-m", "vmrun"])


@attrs.frozen
class Hosts:
    first: Side
    second: Side
    rsh: str

    def move(self, name: str, source: Side, destination: Side) -> subprocess.CompletedProcess[str]:
        return source.vmrun("migrate", name, "--to", f"root@{destination.address}", "-e", self.rsh,
                            "--remote-vmrun", destination.remote_vmrun(), "--json", timeout=300)


def _sshd(netns: str, address: str, keys: Path) -> subprocess.Popen[bytes]:
    config = keys / f"sshd-{netns}.conf"
    config.write_text(
        f"ListenAddress {address}\nHostKey {keys / 'host_key'}\nAuthorizedKeysFile {keys / 'client_key.pub'}\n"
        f"PidFile none\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory, which it requires
    sshd = subprocess.Popen(["ip", "netns", "exec", netns, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)])
    deadline = time.monotonic() + 10
    while run("ip", "netns", "exec", netns, "ss", "-Hltn", f"src {address}", check=False).stdout.strip() == "":
        assert sshd.poll() is None and time.monotonic() < deadline, "sshd did not start"
        time.sleep(0.05)
    return sshd


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    with two_hosts(tmp_path) as both:
        yield both


@contextmanager
def two_hosts(tmp_path: Path) -> Iterator[Hosts]:
    """Two namespaces, a veth pair, an sshd in each; on the way out every VM, sshd and namespace is gone."""
    tag = f"{os.getpid() % 100000}"
    names = (f"vmrun-mig{tag}-a", f"vmrun-mig{tag}-b")
    keys = tmp_path / "keys"
    keys.mkdir()
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host_key"))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client_key"))
    sshds: list[subprocess.Popen[bytes]] = []
    veth = f"vmig{tag}"
    try:
        for netns in names:
            run("ip", "netns", "add", netns)
        run("ip", "link", "add", f"{veth}a", "netns", names[0], "type", "veth", "peer", "name", f"{veth}b",
            "netns", names[1])
        sides = []
        for index, (netns, end) in enumerate(zip(names, "ab", strict=True)):
            address = f"{SUBNET}.{index + 1}"
            for command in (["ip", "addr", "add", f"{address}/30", "dev", f"{veth}{end}"],
                            ["ip", "link", "set", f"{veth}{end}", "up"], ["ip", "link", "set", "lo", "up"]):
                run("ip", "netns", "exec", netns, *command)
            sshds.append(_sshd(netns, address, keys))
            root = tmp_path / f"side-{end}"
            root.mkdir()
            sides.append(Side(netns, address, Vmrun(run_root=root / "run", spec_dir=root,
                                                    enter=("ip", "netns", "exec", netns))))
        rsh = shlex.join(["ssh", "-F", "/dev/null", "-i", str(keys / "client_key"), "-o", "BatchMode=yes",
                          "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "LogLevel=ERROR"])
        yield Hosts(sides[0], sides[1], rsh)
    finally:
        for side_root in (tmp_path / "side-a", tmp_path / "side-b"):
            cli = Vmrun(run_root=side_root / "run", spec_dir=side_root)
            if cli.run_root.exists():
                cli("down", "--all", "--force", timeout=120)
            for pid in qemu_pids_of(cli.run_root):
                run("kill", "-9", str(pid), check=False)
        for sshd in sshds:
            sshd.terminate()
            sshd.wait(timeout=10)
        for netns in names:  # deleting a namespace deletes its veth end, its peer and the taps in it
            run("ip", "netns", "delete", netns, check=False)


def tiny_spec(directory: Path, name: str, extra: str = "") -> Path:
    """The tiny guest with a tap NIC and a qcow2 disk both hosts see at one path (shared storage)."""
    spec = directory / f"{name}.toml"
    spec.write_text(f"""\
name = "{name}"
[machine]
accel = "tcg"
cpus = 1
memory = "256M"
[boot]
kernel = "{IMAGES / 'vmlinuz'}"
initrd = "{IMAGES / 'initrd.gz'}"
append = "console=ttyS0 quiet"
[[disks]]
id = "data"
path = "{directory / f'{name}.qcow2'}"
format = "qcow2"
size = "64M"
[[nics]]
id = "net0"
[agent]
timeout = "120s"
{extra}""")
    return spec


def guest(side: Side, name: str, *command: str) -> str:
    result = side.vmrun("exec", name, "--", *command)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_tiny_guest_moves_live_to_the_other_host_and_back(hosts: Hosts, tmp_path: Path) -> None:
    first, second = hosts.first, hosts.second
    up = first.vmrun("up", str(tiny_spec(tmp_path, "mig")))
    assert up.returncode == 0, up.stderr
    boot_id = guest(first, "mig", "cat", "/proc/sys/kernel/random/boot_id")
    guest(first, "mig", "sh", "-c", "echo still here > /tmp/mark")

    for source, destination in ((first, second), (second, first)):
        moved = hosts.move("mig", source, destination)
        assert moved.returncode == 0, moved.stderr
        report = json.loads(moved.stdout)
        assert report.keys() == {"name", "state", "to", "downtime_ms", "total_ms", "bytes"}
        assert (report["name"], report["state"], report["to"]) == ("mig", "migrated", f"root@{destination.address}")
        assert report["bytes"] > 0 and report["total_ms"] >= report["downtime_ms"] >= 0
        # The same boot of the guest, its RAM kept, now on the destination alone.
        assert guest(destination, "mig", "cat", "/proc/sys/kernel/random/boot_id") == boot_id
        assert guest(destination, "mig", "cat", "/tmp/mark") == "still here\n"
        assert destination.has_tap("mig.net0") and not source.has_tap("mig.net0")
        assert len(qemu_pids_of(destination.vmrun.run_root)) == 1 and qemu_pids_of(source.vmrun.run_root) == []
        assert not (source.vmrun.run_root / "mig").exists()
        statuses = json.loads(destination.vmrun("status", "--json").stdout)
        assert [(vm["name"], vm["state"]) for vm in statuses] == [("mig", "running")]
        assert json.loads(source.vmrun("status", "--json").stdout) == []
        # Post-boot steps are not run again there.
        assert "ethtool" not in moved.stderr

    down = first.vmrun("down", "mig", "--force")
    assert down.returncode == 0, down.stderr
    assert not first.has_tap("mig.net0")


def test_a_mounted_9p_share_is_refused_and_the_vm_stays(hosts: Hosts, tmp_path: Path) -> None:
    first, second = hosts.first, hosts.second
    spec = tiny_spec(tmp_path, "nine", '[[shares]]\nid = "keymaps"\npath = "/usr/share/qemu/keymaps"\n'
                                       'tag = "keymaps"\nreadonly = true\n')
    up = first.vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    assert guest(first, "nine", "ls", "/mnt/keymaps/en-us") == "/mnt/keymaps/en-us\n"
    pid = qemu_pids_of(first.vmrun.run_root)

    moved = hosts.move("nine", first, second)
    assert moved.returncode == 3, moved.stderr
    assert "qemu says: Migration is disabled when VirtFS export path '/usr/share/qemu/keymaps' is mounted in the " \
        "guest using mount_tag 'keymaps'\n" in moved.stderr
    # The source untouched (the same qemu, its guest answering), the destination never touched.
    assert qemu_pids_of(first.vmrun.run_root) == pid
    assert guest(first, "nine", "cat", "/proc/uptime")
    assert first.has_tap("nine.net0") and not second.has_tap("nine.net0")
    assert not second.vmrun.run_root.exists() or not (second.vmrun.run_root / "nine").exists()
    assert first.vmrun("down", "nine", "--force").returncode == 0


def kill_at(side: Side, point: str) -> str:
    """--remote-vmrun for a migration to this side whose vmrun there is killed at a crash point."""
    return shlex.join(["env", f"PYTHONPATH={REPO}", f"VMRUN_RUN_DIR={side.vmrun.run_root}",
                       f"VMRUN_STATE_DIR={side.vmrun.state_root}", f"VMRUN_TEST_KILL_AT={point}", sys.executable,
                       "-X", "vmrun-crash-points", "-m", "vmrun"])


def settled(side: Side, name: str, timeout: float = 60) -> str | None:
    """The VM's state on a side once that side's vmrun is done with it (its lock free): None for no VM."""
    deadline = time.monotonic() + timeout
    while True:
        found = [vm["state"] for vm in json.loads(side.vmrun("status", "--json").stdout) if vm["name"] == name]
        busy = subprocess.run(["flock", "-n", str(side.vmrun.run_root / ".locks" / f"{name}.lock"), "true"],
                              check=False).returncode != 0
        if not busy or time.monotonic() > deadline:
            return found[0] if found else None
        time.sleep(0.2)


@pytest.mark.parametrize(("killed", "point", "runs_on"), [
    ("source", "after the destination is ready", "source"),
    ("source", "after the migration completed", "destination"),
    ("destination", "after listening for the migration", "source"),
    ("destination", "after launching the incoming qemu", "source"),
])
def test_a_killed_migration_leaves_the_guest_on_one_side_and_down_force_cleans_the_other(
    hosts: Hosts, tmp_path: Path, killed: str, point: str, runs_on: str,
) -> None:
    source, destination = hosts.first, hosts.second
    up = source.vmrun("up", str(tiny_spec(tmp_path, "kill")))
    assert up.returncode == 0, up.stderr
    boot_id = guest(source, "kill", "cat", "/proc/sys/kernel/random/boot_id")
    to = ["migrate", "kill", "--to", f"root@{destination.address}", "-e", hosts.rsh]
    if killed == "source":
        moved = source.vmrun(*to, "--remote-vmrun", destination.remote_vmrun(), kill_at=point)
        assert moved.returncode == -9, moved.stderr
    else:
        moved = source.vmrun(*to, "--remote-vmrun", kill_at(destination, point))
        assert moved.returncode == 4, moved.stderr
        assert "the VM runs on here" in moved.stderr

    runs, other = (source, destination) if runs_on == "source" else (destination, source)
    assert settled(runs, "kill") == "running"
    assert guest(runs, "kill", "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    if settled(other, "kill") is not None:
        cleaned = other.vmrun("down", "--force", "kill")
        assert cleaned.returncode == 0, cleaned.stderr
    assert not other.has_tap("kill.net0") and qemu_pids_of(other.vmrun.run_root) == []
    assert not (other.vmrun.run_root / "kill").exists()
    assert runs.has_tap("kill.net0") and len(qemu_pids_of(runs.vmrun.run_root)) == 1
    assert runs.vmrun("down", "--force", "kill").returncode == 0
