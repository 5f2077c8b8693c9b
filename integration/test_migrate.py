"""`vmrun migrate` between two hosts on one machine: two network namespaces of the test's own joined by a veth
pair, an sshd in each, and a run root per side. The tiny guest moves live (no reboot) and back."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
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
    cache: Path  # the side's own image cache, which qemu's user can read: a base by URL is fetched on each side

    def has_tap(self, tap: str) -> bool:
        return run("ip", "netns", "exec", self.netns, "ip", "link", "show", tap, check=False).returncode == 0

    def remote_vmrun(self, disks_from: tuple[Path, Path] | None = None) -> str:
        """--remote-vmrun for a migration to this side. disks_from (what, over): the destination's vmrun
        and its qemu see the directory `what` at the path `over`, in a mount namespace of their own, so a
        disk copied there is another file at the same path."""
        vmrun = ["env", f"PYTHONPATH={REPO}", f"VMRUN_RUN_DIR={self.vmrun.run_root}",
                 f"VMRUN_STATE_DIR={self.vmrun.state_root}", f"VMRUN_CACHE_DIR={self.cache}", sys.executable, "-m",
                 "vmrun"]
        return shlex.join([*(bound(*disks_from) if disks_from is not None else ()), *vmrun])

    def seeing(self, what: Path, over: Path) -> Side:
        """This side with its own vmrun in such a mount namespace too: a source that sees the disks it runs on."""
        return attrs.evolve(self, vmrun=attrs.evolve(self.vmrun, enter=(*self.vmrun.enter, *bound(what, over))))


def bound(what: Path, over: Path) -> list[str]:
    """The command prefix that runs a command with the directory what seen at the path over."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(what), str(over)]


@attrs.frozen
class Hosts:
    first: Side
    second: Side
    rsh: str

    def move(self, name: str, source: Side, destination: Side, *options: str, remote_vmrun: str | None = None,
             kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
        return source.vmrun("migrate", name, "--to", f"root@{destination.address}", "-e", self.rsh,
                            "--remote-vmrun", remote_vmrun or destination.remote_vmrun(), "--json", *options,
                            timeout=300, kill_at=kill_at)

    def other(self, side: Side) -> Side:
        return self.second if side is self.first else self.first


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
    caches = Path(tempfile.mkdtemp(prefix="vmrun-test-caches-"))
    caches.chmod(0o755)
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
                                                    enter=("ip", "netns", "exec", netns)), caches / end))
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
        shutil.rmtree(caches)


def tiny_spec(directory: Path, name: str, extra: str = "", *, disks: Path | None = None, base: str = "") -> Path:
    """The tiny guest with a tap NIC and a qcow2 disk both hosts see at one path (shared storage), or in
    the directory disks; base: the disk's base and base_digest lines."""
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
path = "{(disks or directory) / f'{name}.qcow2'}"
format = "qcow2"
size = "64M"
{base}[[nics]]
id = "net0"
[agent]
timeout = "120s"
{extra}""")
    return spec


def guest(side: Side, name: str, *command: str) -> str:
    result = side.vmrun("exec", name, "--", *command)
    assert result.returncode == 0, result.stderr
    return result.stdout


def moved_live(moved: subprocess.CompletedProcess[str], source: Side, destination: Side, boot_id: str) -> None:
    """A migration that completed: its report, and the guest on the destination alone with its boot and RAM."""
    name = "loop"
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert report.keys() == {"name", "state", "to", "downtime_ms", "total_ms", "bytes", "disk_bytes"}
    assert (report["name"], report["state"], report["to"]) == (name, "migrated", f"root@{destination.address}")
    assert report["bytes"] > 0 and report["total_ms"] >= report["downtime_ms"] >= 0
    assert report["disk_bytes"] is None
    # The same boot of the guest, its RAM kept, now on the destination alone.
    assert guest(destination, name, "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    assert guest(destination, name, "cat", "/tmp/mark") == "still here\n"
    assert destination.has_tap(f"{name}.net0") and not source.has_tap(f"{name}.net0")
    assert len(qemu_pids_of(destination.vmrun.run_root)) == 1 and qemu_pids_of(source.vmrun.run_root) == []
    assert not (source.vmrun.run_root / name).exists()
    statuses = json.loads(destination.vmrun("status", "--json").stdout)
    assert [(vm["name"], vm["state"]) for vm in statuses] == [(name, "running")]
    assert json.loads(source.vmrun("status", "--json").stdout) == []
    # Post-boot steps are not run again there.
    assert "ethtool" not in moved.stderr


def disk_directories(tmp_path: Path) -> tuple[Path, Path]:
    """Where the source keeps the disks, and the directory the destination's mount namespace shows there."""
    disks, theirs = tmp_path / "disks", tmp_path / "side-b-disks"
    disks.mkdir()
    theirs.mkdir()
    return disks, theirs


def started(side: Side, tmp_path: Path, name: str, disks: Path, extra: str = "") -> str:
    """The tiny guest up on one side with its disk in disks; its boot_id."""
    up = side.vmrun("up", str(tiny_spec(tmp_path, name, extra, disks=disks)))
    assert up.returncode == 0, up.stderr
    return guest(side, name, "cat", "/proc/sys/kernel/random/boot_id")


def test_copy_storage_moves_the_disk_to_a_file_of_the_destination_with_the_guest_live_and_back(
    hosts: Hosts, tmp_path: Path,
) -> None:
    first, second = hosts.first, hosts.second
    disks, theirs = disk_directories(tmp_path)
    # A cloud-init seed too: the destination gets the very seed the guest runs with, not its user's files.
    (tmp_path / "user-data.yaml").write_text("#cloud-config\n")
    boot_id = started(first, tmp_path, "copy", disks, '[cloud_init]\nuser_data = "user-data.yaml"\n')
    seed = (first.vmrun.state_root / "copy" / "seed.iso").read_bytes()
    (tmp_path / "user-data.yaml").unlink()
    guest(first, "copy", "sh", "-c", "printf '%-16s' 'block one' | dd of=/dev/sda bs=16 seek=4096 conv=fsync "
                                     "2>/dev/null")

    moved = hosts.move("copy", first, second, "--copy-storage", remote_vmrun=second.remote_vmrun((theirs, disks)))
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert report["state"] == "migrated" and report["disk_bytes"] > 0
    assert report["bytes"] > report["disk_bytes"]  # the RAM's bytes and the disk's, together
    assert "disk" in moved.stderr
    assert guest(second, "copy", "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    # The block reads back on the destination, from the destination's own file, which qemu there writes.
    read = "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/sda bs=16 skip=4096 count=1 2>/dev/null"
    assert guest(second, "copy", "sh", "-c", read) == "block one       "
    assert (theirs / "copy.qcow2").exists() and (disks / "copy.qcow2").exists()
    [pid] = qemu_pids_of(second.vmrun.run_root)
    assert os.stat(f"/proc/{pid}/root{disks / 'copy.qcow2'}").st_ino == (theirs / "copy.qcow2").stat().st_ino
    assert qemu_pids_of(first.vmrun.run_root) == [] and second.has_tap("copy.net0")
    assert (second.vmrun.state_root / "copy" / "seed.iso").read_bytes() == seed

    # And back: the disk file the guest left here is replaced by the copy it comes back with, written since.
    guest(second, "copy", "sh", "-c", "printf '%-16s' 'block two' | dd of=/dev/sda bs=16 seek=8192 conv=fsync "
                                      "2>/dev/null")
    back = hosts.move("copy", second.seeing(theirs, disks), first, "--copy-storage")
    assert back.returncode == 0, back.stderr
    assert "removed the copy the guest left here by moving away" in back.stderr
    assert guest(first, "copy", "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    assert guest(first, "copy", "sh", "-c", read.replace("4096", "8192")) == "block two       "
    assert qemu_pids_of(second.vmrun.run_root) == [] and first.has_tap("copy.net0")
    assert first.vmrun("down", "copy").returncode == 0
    check = run("qemu-img", "compare", "-q", str(disks / "copy.qcow2"), str(theirs / "copy.qcow2"), check=False)
    assert check.returncode == 0, check.stdout  # the same contents, block for block


def test_copy_storage_given_up_leaves_the_guest_writing_its_own_disk_and_the_destination_without_a_copy(
    hosts: Hosts, tmp_path: Path,
) -> None:
    first, second = hosts.first, hosts.second
    disks, theirs = disk_directories(tmp_path)
    boot_id = started(first, tmp_path, "gave", disks)

    # No copy is ready, or no migration done, within a millisecond: the mirrors are abandoned.
    moved = hosts.move("gave", first, second, "--copy-storage", "--timeout", "0.001",
                       remote_vmrun=second.remote_vmrun((theirs, disks)))
    assert moved.returncode == 4 and "the VM runs on here" in moved.stderr, moved.stderr
    assert not (theirs / "gave.qcow2").exists() and not (second.vmrun.run_root / "gave").exists()
    assert qemu_pids_of(second.vmrun.run_root) == [] and not second.has_tap("gave.net0")
    # The source's guest writes its disk on, the abandoned copy detached from it.
    guest(first, "gave", "sh", "-c", "printf '%-16s' 'after' | dd of=/dev/sda bs=16 seek=8 conv=fsync 2>/dev/null")
    assert guest(first, "gave", "cat", "/proc/sys/kernel/random/boot_id") == boot_id
    assert json.loads(first.vmrun("status", "--json").stdout)[0]["state"] == "running"
    # And it still moves once given the time.
    again = hosts.move("gave", first, second, "--copy-storage", remote_vmrun=second.remote_vmrun((theirs, disks)))
    assert again.returncode == 0, again.stderr
    assert guest(second, "gave", "sh", "-c", "dd if=/dev/sda bs=16 skip=8 count=1 2>/dev/null") == "after           "
    assert second.vmrun("down", "gave").returncode == 0


def test_copy_storage_of_an_overlay_sends_its_top_and_the_destination_fetches_the_base_by_digest(
    hosts: Hosts, tmp_path: Path, reachable_tmp: Path,
) -> None:
    first, second = hosts.first, hosts.second
    disks, theirs = disk_directories(tmp_path)
    base = reachable_tmp / "base.raw"
    base.write_bytes(b"the base's first sector".ljust(512) + os.urandom(32 * 2**20 - 512))
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    spec = tiny_spec(tmp_path, "ovl", disks=disks, base=f'base = "{base.as_uri()}"\nbase_digest = "sha256:{digest}"\n')
    up = first.vmrun("up", str(spec), env={"VMRUN_CACHE_DIR": str(first.cache)})
    assert up.returncode == 0, up.stderr
    guest(first, "ovl", "sh", "-c", "printf '%-16s' 'the top' | dd of=/dev/sda bs=16 seek=4096 conv=fsync 2>/dev/null")

    moved = hosts.move("ovl", first, second, "--copy-storage", remote_vmrun=second.remote_vmrun((theirs, disks)))
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert 0 < report["disk_bytes"] < 2**20  # the overlay's few clusters, not the 32 MiB base
    read = "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/sda bs={} skip={} count=1 2>/dev/null"
    assert guest(second, "ovl", "sh", "-c", read.format(16, 4096)) == "the top         "
    assert guest(second, "ovl", "sh", "-c", read.format(23, 0)) == "the base's first sector"
    info = json.loads(run("qemu-img", "info", "-U", "--output=json", str(theirs / "ovl.qcow2")).stdout)
    assert Path(info["full-backing-filename"]).is_relative_to(second.cache)  # its own image cache
    assert second.vmrun("down", "ovl").returncode == 0


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
    deadline, lock = time.monotonic() + timeout, side.vmrun.run_root / ".locks" / f"{name}.lock"
    # The lock first, then the state: a state read while that vmrun still works may be gone once it is done.
    while lock.exists() and subprocess.run(["flock", "-n", str(lock), "true"], check=False).returncode != 0 \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    found = [vm["state"] for vm in json.loads(side.vmrun("status", "--json").stdout) if vm["name"] == name]
    return found[0] if found else None


# The crash points each side's vmrun passes in a migration that completes (shared storage, one tap): a point
# that disappears, or one added without this test seeing it, fails the test. The source: the destination
# started and ready, each mark written, the switch-over told, its qemu stopped, its tap undone, its console
# log kept, its run dir removed. The destination: its run dir, journal and tap, qemu's launch, listening,
# telling the source where, the switch-over and its mark.
SOURCE_POINTS = 15
DESTINATION_POINTS = 13
MOST_POINTS = 60  # a loop past this many never ended without a kill


def test_a_migration_killed_at_every_crash_point_of_either_side_leaves_the_guest_on_one_and_the_other_cleans(
    hosts: Hosts, tmp_path: Path,
) -> None:
    """One guest, booted once: killed at the Nth crash point of the source's vmrun, then of the destination's,
    N = 1, 2, ... until a migration passes them all. Whichever side runs the guest after a kill is the next
    source. Each of the two migrations that pass them all moves the guest live to the other host."""
    spec = tiny_spec(tmp_path, "loop")
    up = hosts.first.vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    boot_id = guest(hosts.first, "loop", "cat", "/proc/sys/kernel/random/boot_id")
    guest(hosts.first, "loop", "sh", "-c", "echo still here > /tmp/mark")
    runs = hosts.first
    counts, seconds = {}, {}
    for killed in ("source", "destination"):
        started = time.monotonic()
        for number in range(1, MOST_POINTS + 1):
            source, destination = runs, hosts.other(runs)
            armed = str(number)
            moved = hosts.move("loop", source, destination, kill_at=armed if killed == "source" else None,
                               remote_vmrun=kill_at(destination, armed) if killed == "destination" else None)
            if moved.returncode == 0:  # no crash point left to kill at: the guest moved
                moved_live(moved, source, destination, boot_id)
                counts[killed], runs = number - 1, destination
                break
            said = f"VMRUN_TEST_KILL_AT: SIGKILL at crash point {number}: "
            assert said in moved.stderr, (killed, number, moved.returncode, moved.stderr)
            point = f"{killed} {number}: {moved.stderr.split(said, 1)[1].splitlines()[0]}"
            runs = one_side_runs(hosts, spec, boot_id, point)
        else:
            pytest.fail(f"the {killed}'s vmrun was still killed at crash point {MOST_POINTS}")
        seconds[killed] = time.monotonic() - started
        print(f"{killed}: {counts[killed]} crash points, {seconds[killed]:.1f} s")
    assert (counts["source"], counts["destination"]) == (SOURCE_POINTS, DESTINATION_POINTS), counts
    assert runs.vmrun("down", "--force", "loop").returncode == 0
    assert not runs.has_tap("loop.net0")


def one_side_runs(hosts: Hosts, spec: Path, boot_id: str, point: str) -> Side:
    """After a kill: one side's status says running, with the same boot of the guest, its tap and one qemu;
    --abort refuses it and cleans what is left on the other, where up refuses a paused source. That side."""
    name = spec.stem
    first, second = settled(hosts.first, name), settled(hosts.second, name)
    assert [first, second].count("running") == 1, (point, first, second)
    runs, left = (hosts.first, second) if first == "running" else (hosts.second, first)
    other = hosts.other(runs)
    # A run dir half made or half removed (a kill inside its rename) reads dead, as after any killed up or down.
    half = not (other.vmrun.run_root / name).exists()
    assert left in ("migrated", "incoming", None, *(("dead",) if half else ())), (point, first, second)
    assert guest(runs, name, "cat", "/proc/sys/kernel/random/boot_id") == boot_id, point
    refused = runs.vmrun("migrate", name, "--abort")
    assert refused.returncode == 2 and f"{name} is running here: this is the live copy" in refused.stderr, \
        (point, refused.stderr)
    if left == "migrated" and qemu_pids_of(other.vmrun.run_root):  # its qemu paused for good, never resumed
        again = other.vmrun("up", str(spec))
        assert again.returncode == 2 and f"{name} migrated to another host" in again.stderr, (point, again.stderr)
    if left is not None:
        cleaned = other.vmrun("migrate", name, "--abort")
        assert cleaned.returncode == 0, (point, cleaned.stderr)
    assert not other.has_tap(f"{name}.net0") and qemu_pids_of(other.vmrun.run_root) == [], point
    assert not (other.vmrun.run_root / name).exists(), point
    assert runs.has_tap(f"{name}.net0") and len(qemu_pids_of(runs.vmrun.run_root)) == 1, point
    return runs


@pytest.mark.parametrize(("point", "runs_on", "left"), [
    ("after the disks are in step", "source", None),
    ("after the migration completed", "destination", "migrated"),
])
def test_a_copy_storage_migration_killed_leaves_the_guest_on_one_side_and_abort_cleans_the_other(
    hosts: Hosts, tmp_path: Path, point: str, runs_on: str, left: str | None,
) -> None:
    source, destination = hosts.first, hosts.second
    disks, theirs = disk_directories(tmp_path)
    boot_id = started(source, tmp_path, "kill", disks)
    moved = hosts.move("kill", source, destination, "--copy-storage", kill_at=point,
                       remote_vmrun=destination.remote_vmrun((theirs, disks)))
    assert moved.returncode == -9, moved.stderr

    # Each side's status tells which one runs the guest, from what its state and its qemu say.
    runs, other = (source, destination) if runs_on == "source" else (destination, source)
    assert settled(other, "kill") == left
    assert one_side_runs(hosts, tmp_path / "kill.toml", boot_id, point) is runs
    if runs_on == "source":  # the destination's copy went with its run: a failed up's disk
        assert not (theirs / "kill.qcow2").exists()
    assert runs.vmrun("down", "--force", "kill").returncode == 0
