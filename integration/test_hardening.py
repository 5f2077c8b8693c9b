"""vmrun as an attacker and a careless user try it, with real qemu (TCG), real taps, a real bridge and KSM.

Each VM here is guest-less (an empty disk), so nothing waits for a guest unless a test asks for the agent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

from .conftest import Vmrun, qemu_pids_of

KSM_RUN = Path("/sys/kernel/mm/ksm/run")
SUFFIX = str(os.getpid())[-5:]
MakeSpec = Callable[..., Path]


def net(name: str) -> Path:
    return Path("/sys/class/net") / name


@pytest.fixture
def ksm_restored() -> Iterator[str]:
    """The host's KSM setting before the test, put back after it whatever happens."""
    before = KSM_RUN.read_text().strip()
    yield before
    if KSM_RUN.read_text().strip() != before:
        KSM_RUN.write_text(before)


@pytest.fixture
def bridge() -> Iterator[str]:
    name = f"vmrtbr{SUFFIX}"
    subprocess.run(["ip", "link", "add", "name", name, "type", "bridge"], check=True)
    yield name
    subprocess.run(["ip", "link", "del", name], check=True)


@pytest.fixture
def spec_with_a_tap(guestless_spec: Callable[..., Path]) -> Callable[..., Path]:
    """A guest-less VM with a derived two-queue tap ("<name>.n0"), optionally on a bridge and wanting KSM."""

    def make(name: str, *, agent: bool = False, ksm: bool = False, bridge: str = "") -> Path:
        bridge_line = f'bridge = "{bridge}"' if bridge else ""
        nic_and_host = f'[[nics]]\nid = "n0"\nqueues = 2\n{bridge_line}\n[host]\nksm = {"true" if ksm else "false"}'
        return guestless_spec(name, nic_and_host, agent=agent, cpus=2)

    return make


def assert_nothing_left(vmrun: Vmrun, name: str) -> None:
    assert not net(f"{name}.n0").exists(), f"tap {name}.n0 left behind"
    assert qemu_pids_of(vmrun.run_root) == []
    assert not (vmrun.run_root / name).exists()


SYSTEM_USER = "vmrun"


@contextmanager
def new_host_users(vmrun: Vmrun, where: Path) -> Iterator[Vmrun]:
    """vmrun as on a host where the system user vmrun does not exist yet, so preflight creates it: the
    commands run in a private mount namespace whose /etc is an overlay without that user (its changes
    land in `where`). Taps, KSM and processes are the host's own; its users stay as they are."""
    holder, upper, work = where / "namespace", where / "etc", where / "work"
    for directory in (holder, upper, work):
        directory.mkdir(parents=True)
    for database in ("passwd", "group", "shadow", "gshadow"):
        source, copy = Path("/etc") / database, upper / database
        copy.write_text("".join(line for line in source.read_text().splitlines(keepends=True)
                                if not line.startswith(f"{SYSTEM_USER}:")))
        shutil.copystat(source, copy)
        os.chown(copy, source.stat().st_uid, source.stat().st_gid)
    namespace = holder / "mnt"
    run("mount", "--bind", str(holder), str(holder))
    try:
        run("mount", "--make-private", str(holder))
        namespace.touch()
        run("unshare", f"--mount={namespace}", "--propagation", "private", "true")
        enter = ("nsenter", f"--mount={namespace}", "--")
        run(*enter, "mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/etc,upperdir={upper},workdir={work}",
            "/etc")
        assert subprocess.run([*enter, "id", SYSTEM_USER], capture_output=True).returncode == 1
        yield attrs.evolve(vmrun, enter=enter)
    finally:
        subprocess.run(["umount", str(namespace)], check=False)
        run("umount", str(holder))


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@attrs.frozen
class EveryKind:
    """A guest-less VM whose `up` makes every kind of host change this machine offers: the system user, two
    taps (one on a bridge), KSM, the directories and an ephemeral overlay on a base, a cloud-init seed and
    UEFI variables; with a share. `fresh` gives each try a host as before the first."""

    vmrun: Vmrun
    spec: Path
    name: str
    base: Path
    overlay: Path
    bridge: str
    ksm_before: str

    @property
    def taps(self) -> list[Path]:
        return [net(f"{self.name}.n0"), net(f"{self.name}.n1")]

    @contextmanager
    def fresh(self, attempt: int) -> Iterator[Vmrun]:
        """No system user, no overlay directories, no state directory (seed, UEFI variables)."""
        shutil.rmtree(self.vmrun.state_root, ignore_errors=True)
        shutil.rmtree(self.overlay.parent.parent, ignore_errors=True)
        with new_host_users(self.vmrun, self.vmrun.spec_dir / f"host{attempt}") as vmrun:
            yield vmrun

    def assert_nothing_left(self, base_sha256: str, after: str) -> None:
        assert qemu_pids_of(self.vmrun.run_root) == [], after
        for tap in self.taps:
            assert not tap.exists(), f"{tap.name} left {after}"
        assert not self.overlay.exists(), f"overlay left {after}"
        assert os.listdir(self.vmrun.run_root) == [".locks"], after
        assert not list((net(self.bridge) / "brif").iterdir()), after
        assert KSM_RUN.read_text().strip() == self.ksm_before, f"KSM not as it was {after}"
        assert sha256(self.base) == base_sha256, f"base written {after}"


@pytest.fixture
def every_kind(vmrun: Vmrun, guestless_spec: MakeSpec, reachable_tmp: Path, bridge: str,
               ksm_restored: str) -> EveryKind:
    name = f"e{SUFFIX}"
    base = reachable_tmp / "base.raw"
    base.write_bytes(os.urandom(2**20))
    base.chmod(0o644)
    share = reachable_tmp / "share"
    share.mkdir()
    (vmrun.spec_dir / "user-data.yaml").write_text("#cloud-config\n")
    spec = guestless_spec(name, f"""
        [[disks]]
        id = "scratch"
        path = "disks/{name}/scratch.qcow2"
        format = "qcow2"
        base = "{base}"
        ephemeral = true
        [[nics]]
        id = "n0"
        queues = 2
        bridge = "{bridge}"
        [[nics]]
        id = "n1"
        [[shares]]
        id = "data"
        path = "{share}"
        tag = "data"
        readonly = true
        [cloud_init]
        user_data = "user-data.yaml"
        [host]
        ksm = true
        """, cpus=2)
    spec.write_text(spec.read_text().replace('disk = "empty"', 'disk = "empty"\nfirmware = "uefi"'))
    return EveryKind(vmrun, spec, name, base, vmrun.spec_dir / "disks" / name / "scratch.qcow2", bridge,
                     ksm_restored)


def killed_at(result: subprocess.CompletedProcess[str]) -> str:
    """The label of the crash point vmrun was killed at."""
    assert result.returncode == -signal.SIGKILL, result.stderr
    return result.stderr.strip().splitlines()[-1].split(": ", 3)[-1]


MAX_POINTS = 200
# These VMs boot nothing, so an ACPI powerdown is never answered: waiting a second for it, on each of the kill
# loops' ~75 downs, was a minute of the suite. The powerdown is still sent; quit follows at once.
QUICK_DOWN = ("--timeout", "0.05")


@pytest.mark.parametrize("then", ["down --force", "up"])
def test_killed_at_every_crash_point_of_up_then_down_force_or_up_leaves_nothing(
        every_kind: EveryKind, then: str) -> None:
    base = sha256(every_kind.base)
    points = []
    for point in range(1, MAX_POINTS):
        with every_kind.fresh(point) as vmrun:
            up = vmrun("up", str(every_kind.spec), kill_at=str(point))
            if up.returncode == 0:
                down = vmrun("down", *QUICK_DOWN, every_kind.name)
                assert down.returncode == 0, down.stderr
                break
            points.append(killed_at(up))
            if then == "up":  # the next up cleans up the dead run (or finds the VM running) and starts it
                again = vmrun("up", str(every_kind.spec))
                assert again.returncode == 0, f"after a kill {points[-1]}: {again.stderr}"
                down = vmrun("down", *QUICK_DOWN, every_kind.name)
            else:
                down = vmrun("down", "--force", every_kind.name)
        assert down.returncode == 0, f"after a kill {points[-1]}: {down.stderr}"
        every_kind.assert_nothing_left(base, f"after a kill at {point}: {points[-1]}")
    else:
        pytest.fail("up never got past its crash points")
    every_kind.assert_nothing_left(base, "after up and down")
    # What down leaves on purpose is named, with the way to remove it.
    kept = f"(by hand: rmdir {every_kind.overlay.parent}; rmdir {every_kind.overlay.parent.parent}; userdel vmrun)"
    assert kept in down.stderr
    assert "kept for the next up: " in down.stderr and "seed.iso" in down.stderr
    expected = [
        "run/.e", "after creating the run directory", "before useradd", "after useradd", "before mkdir",
        "before qemu-img create", "after qemu-img create", "before ip tuntap add", "before ip link set",
        "after ip link set", "before write /sys/kernel/mm/ksm/run", "after write /sys/kernel/mm/ksm/run",
        "journal.log appended", "OVMF_VARS.fd.partial written", "seed.iso.partial written",
        "before launching qemu", "qemu started, its pidfile not yet written", "after launching qemu",
    ]
    assert [kind for kind in expected if not any(kind in point for point in points)] == []
    print(f"{len(points)} crash points in up: {points}")


def test_killed_at_every_crash_point_of_down_then_a_graceful_down_finishes(every_kind: EveryKind) -> None:
    base = sha256(every_kind.base)
    points = []
    for point in range(1, MAX_POINTS):
        with every_kind.fresh(point) as vmrun:
            up = vmrun("up", str(every_kind.spec))
            assert up.returncode == 0, up.stderr
            down = vmrun("down", *QUICK_DOWN, every_kind.name, kill_at=str(point))
            if down.returncode == 0:
                break
            points.append(killed_at(down))
            again = vmrun("down", *QUICK_DOWN, every_kind.name)
        assert again.returncode == 0, f"after a kill {points[-1]}: {again.stderr}"
        assert "could not undo" not in again.stderr, f"undone twice after a kill {points[-1]}: {again.stderr}"
        every_kind.assert_nothing_left(base, f"after a kill at {point}: {points[-1]}")
    else:
        pytest.fail("down never got past its crash points")
    every_kind.assert_nothing_left(base, "after down")
    expected = [
        "before stopping", "after stopping", "before undoing write /sys/kernel/mm/ksm/run",
        "after undoing ip link set", "before undoing ip tuntap add", "after undoing qemu-img create",
        "journal.log appended", "not yet deleted",
    ]
    assert [kind for kind in expected if not any(kind in point for point in points)] == []
    print(f"{len(points)} crash points in down: {points}")


def test_a_kill_while_qemu_daemonizes_then_down_force_leaves_nothing(vmrun: Vmrun, spec_with_a_tap: MakeSpec) -> None:
    """Killed between qemu's start and its pidfile: `down --force` at once finds the daemon (and the parent
    that may still wait for it) by the run's argv, and stops every one before it deletes the tap."""
    name = f"d{SUFFIX}"
    up = vmrun("up", str(spec_with_a_tap(name)), kill_at="qemu started, its pidfile not yet written")
    assert killed_at(up) == "qemu started, its pidfile not yet written", up.stderr
    down = vmrun("down", "--force", name)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(vmrun, name)


def test_the_crash_point_variable_alone_does_not_stop_a_run(vmrun: Vmrun, guestless_spec: MakeSpec) -> None:
    spec = guestless_spec()
    up = vmrun("up", str(spec), env={"VMRUN_TEST_KILL_AT": "1"})  # as exported in a user's shell
    assert up.returncode == 0, up.stderr
    assert vmrun("down", "--force", "bare").returncode == 0


def test_a_second_sigterm_during_the_rollback_waits_until_it_is_done(vmrun: Vmrun, spec_with_a_tap: MakeSpec) -> None:
    name = f"r{SUFFIX}"
    spec = spec_with_a_tap(name)
    # The first SIGTERM right after the tap is made; the second while its rollback deletes it.
    up = vmrun("up", str(spec), kill_at="after ip tuntap add,before undoing ip tuntap add", kill_with="TERM")
    assert up.returncode == 130, up.stderr
    assert up.stderr.count("VMRUN_TEST_KILL_AT: SIGTERM at crash point") == 2, up.stderr
    assert "Traceback" not in up.stderr
    assert_nothing_left(vmrun, name)


@pytest.mark.parametrize("racers", [2, 4])
def test_concurrent_ups_of_one_spec_start_exactly_one_qemu(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec, racers: int
) -> None:
    name = f"c{racers}x{SUFFIX}"
    spec = spec_with_a_tap(name)
    processes = [subprocess.Popen(vmrun.argv("up", str(spec)), stderr=subprocess.PIPE, text=True)
                 for _ in range(racers)]
    outcomes = [finish(process) for process in processes]
    try:
        # One racer launches qemu. The others find its lock held (exit 2), or, when they start after it
        # finished, the VM up to date (exit 0, declarative up): none starts a second qemu.
        assert [code for code, stderr in outcomes if "qemu pid" in stderr] == [0], outcomes
        for code, stderr in outcomes:
            assert "Traceback" not in stderr
            if "qemu pid" not in stderr:
                assert (code, "up to date" in stderr) == (0, True) or (
                    code == 2 and "is running or starting" in stderr), stderr
        assert len(qemu_pids_of(vmrun.run_root)) == 1
    finally:
        assert vmrun("down", *QUICK_DOWN, name).returncode == 0
    assert_nothing_left(vmrun, name)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def wait_for_line(process: subprocess.Popen[str], *texts: str) -> None:
    """Read vmrun's stderr until each text has appeared in some line."""
    seen, missing = [], set(texts)
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        missing = {text for text in missing if text not in line}
        if not missing:
            return
    pytest.fail(f"vmrun never said {sorted(missing)}: {''.join(seen)}")


def test_sigterm_while_waiting_for_the_agent_rolls_everything_back(vmrun: Vmrun, spec_with_a_tap: MakeSpec) -> None:
    name = f"t{SUFFIX}"
    spec = spec_with_a_tap(name, agent=True)
    process = subprocess.Popen(vmrun.argv("up", str(spec)), stderr=subprocess.PIPE, text=True)
    wait_for_line(process, "waiting for the guest agent")
    assert net(f"{name}.n0").exists() and len(qemu_pids_of(vmrun.run_root)) == 1
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert_nothing_left(vmrun, name)


def test_qemu_dying_during_start_up_exits_4_and_undoes_the_host_changes(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec
) -> None:
    name = f"d{SUFFIX}"
    spec = spec_with_a_tap(name, agent=True)
    process = subprocess.Popen(vmrun.argv("up", str(spec)), stderr=subprocess.PIPE, text=True)
    wait_for_line(process, "waiting for the guest agent")
    [pid] = qemu_pids_of(vmrun.run_root)
    os.kill(pid, signal.SIGKILL)
    code, stderr = finish(process)
    assert code == 4, stderr
    assert "qemu exited during start-up" in stderr
    assert_nothing_left(vmrun, name)


def test_parallel_vms_share_ksm_and_a_bridge_and_the_last_one_down_restores_ksm(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec, ksm_restored: str, bridge: str
) -> None:
    names = [f"p{index}x{SUFFIX}" for index in range(3)]
    specs = [spec_with_a_tap(name, ksm=True, bridge=bridge) for name in names]
    processes = [subprocess.Popen(vmrun.argv("up", str(spec)), stderr=subprocess.PIPE, text=True) for spec in specs]
    try:
        for process in processes:
            code, stderr = finish(process)
            assert code == 0, stderr
        assert KSM_RUN.read_text().strip() == "1"
        for name in names:
            assert (net(f"{name}.n0") / "master").resolve().name == bridge
        for name in names[:-1]:
            assert vmrun("down", *QUICK_DOWN, name).returncode == 0
            assert KSM_RUN.read_text().strip() == "1", "KSM turned off while another VM wants it"
    finally:
        for name in names:
            vmrun("down", "--force", name)
    assert KSM_RUN.read_text().strip() == ksm_restored
    for name in names:
        assert_nothing_left(vmrun, name)
    assert not list((net(bridge) / "brif").iterdir())


def test_standalone_preflight_is_undone_by_down(vmrun: Vmrun, spec_with_a_tap: MakeSpec) -> None:
    name = f"s{SUFFIX}"
    spec = spec_with_a_tap(name)
    preflight = vmrun("preflight", str(spec))
    assert preflight.returncode == 0, preflight.stderr
    assert net(f"{name}.n0").exists()
    status = vmrun("status", name, "--json")
    assert '"state": "prepared"' in status.stdout
    down = vmrun("down", name)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(vmrun, name)


def test_down_returns_only_once_qemu_is_gone(vmrun: Vmrun, spec_with_a_tap: MakeSpec) -> None:
    name = f"g{SUFFIX}"
    spec = spec_with_a_tap(name)
    assert vmrun("up", str(spec)).returncode == 0
    [pid] = qemu_pids_of(vmrun.run_root)
    started = time.monotonic()
    assert vmrun("down", "--force", name).returncode == 0
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z"
    assert time.monotonic() - started < 60
    assert_nothing_left(vmrun, name)


def test_ctrl_c_during_up_of_a_directory_rolls_back_every_vm_still_starting(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec
) -> None:
    names = [f"i{index}x{SUFFIX}" for index in range(2)]
    for name in names:
        spec_with_a_tap(name, agent=True)
    process = subprocess.Popen(vmrun.argv("up", str(vmrun.spec_dir)), stderr=subprocess.PIPE, text=True)
    wait_for_line(process, *(f"{name}: waiting for the guest agent" for name in names))
    process.send_signal(signal.SIGINT)
    code, stderr = finish(process)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted, rolled back" in stderr.strip().splitlines()[-1]
    for name in names:
        assert_nothing_left(vmrun, name)


@pytest.fixture
def root_only_dir() -> Iterator[Path]:
    """A directory only root controls, up to /, as vmrun asks of a qemu it runs as root."""
    path = Path(tempfile.mkdtemp(prefix="vmrun-test-", dir="/run"))
    yield path
    shutil.rmtree(path)


def test_a_qemu_whose_pid_up_never_read_is_found_and_stopped_by_the_rollback(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec, root_only_dir: Path
) -> None:
    name = f"o{SUFFIX}"
    losing = root_only_dir / "qemu-losing-its-pidfile"
    losing.write_text(f"""#!/bin/sh
# qemu daemonizes, then its pidfile goes: up cannot read the pid of the qemu it started.
{shutil.which("qemu-system-x86_64")} "$@" || exit
previous=
for argument; do
    [ "$previous" = -pidfile ] && rm -f "$argument"
    previous=$argument
done
""")
    losing.chmod(0o755)
    spec = spec_with_a_tap(name)
    spec.write_text(spec.read_text() + f'[qemu]\nbinary = "{losing}"\n')
    up = vmrun("up", str(spec))
    assert up.returncode == 4, up.stderr
    assert "qemu started but wrote no pidfile" in up.stderr
    assert_nothing_left(vmrun, name)


def test_down_stops_a_qemu_whose_pidfile_is_gone_before_it_removes_anything(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec
) -> None:
    name = f"f{SUFFIX}"
    assert vmrun("up", str(spec_with_a_tap(name))).returncode == 0
    [pid] = qemu_pids_of(vmrun.run_root)
    (vmrun.run_root / name / "qemu.pid").unlink()
    status = json.loads(vmrun("status", "--json", name).stdout)
    assert [(vm["state"], vm["pid"]) for vm in status] == [("running", pid)]
    down = vmrun("down", "--force", name)
    assert down.returncode == 0, down.stderr
    assert f"{name} stopped (QMP quit)" in down.stderr
    assert_nothing_left(vmrun, name)


def test_a_damaged_state_file_is_refused_by_down_and_down_force_still_stops_qemu(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec
) -> None:
    name = f"b{SUFFIX}"
    assert vmrun("up", str(spec_with_a_tap(name))).returncode == 0
    state = vmrun.run_root / name / "state.json"
    state.write_text(state.read_text()[:100])  # torn, as a disk that filled up or a hand that edited it
    down = vmrun("down", name)
    assert down.returncode == 2
    assert f"vmrun: error: {state} is not a state file vmrun wrote: what {name} holds" in down.stderr
    assert len(qemu_pids_of(vmrun.run_root)) == 1 and state.exists()
    assert [vm["state"] for vm in json.loads(vmrun("status", "--json").stdout)] == ["damaged"]
    forced = vmrun("down", "--force", name)
    assert forced.returncode == 0, forced.stderr
    assert qemu_pids_of(vmrun.run_root) == [] and not (vmrun.run_root / name).exists()
    assert not net(f"{name}.n0").exists()  # its journal, a file of its own, still named the tap


def test_with_state_and_journal_damaged_down_force_names_the_tap_qemu_held_and_how_to_remove_it(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec
) -> None:
    name = f"j{SUFFIX}"
    tap = f"{name}.n0"
    assert vmrun("up", str(spec_with_a_tap(name))).returncode == 0
    run_dir = vmrun.run_root / name
    (run_dir / "state.json").write_text("{")
    (run_dir / "journal.log").write_text("torn\n")
    forced = vmrun("down", "--force", name)
    assert forced.returncode == 3, forced.stderr
    removal = f"ip tuntap del dev {tap} mode tap multi_queue"
    assert f"tap {tap} ({removal})" in forced.stderr
    assert qemu_pids_of(vmrun.run_root) == [] and not run_dir.exists()
    assert net(tap).exists()  # what no journal says vmrun made is named, not deleted
    run(*removal.split())
def test_host_drift_of_a_running_vm_is_named_by_diff_and_mended_by_a_restart(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec, ksm_restored: str, bridge: str
) -> None:
    name = f"h{SUFFIX}"
    tap = f"{name}.n0"
    spec = spec_with_a_tap(name, ksm=True, bridge=bridge)
    up = vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    try:
        diff = vmrun("diff", str(spec))
        assert (diff.returncode, diff.stdout) == (0, f"{name}: up to date\n")

        subprocess.run(["ip", "link", "set", tap, "nomaster"], check=True)
        KSM_RUN.write_text("0")
        off_bridge = f"nics[0].bridge: tap {tap} is no longer attached to bridge {bridge}"
        ksm_off = f"host.ksm: KSM is off on the host ({KSM_RUN} = 0)"
        diff = vmrun("diff", str(spec))
        assert (diff.returncode, diff.stdout) == (6, f"{name}: differs\n  {off_bridge}\n  {ksm_off}\n")
        refused = vmrun("up", str(spec))
        assert refused.returncode == 2
        assert f"{name} runs with another configuration: {off_bridge}; {ksm_off}" in refused.stderr

        restarted = vmrun("up", "--restart", *QUICK_DOWN, str(spec))
        assert restarted.returncode == 0, restarted.stderr
        assert (net(tap) / "master").resolve().name == bridge and KSM_RUN.read_text().strip() == "1"
        assert vmrun("diff", str(spec)).returncode == 0

        subprocess.run(["ip", "link", "del", tap], check=True)
        diff = vmrun("diff", str(spec))
        assert (diff.returncode, diff.stdout) == (6, f"{name}: differs\n  nics[0]: tap {tap} is gone from the host\n")
    finally:
        down = vmrun("down", *QUICK_DOWN, name)
    assert down.returncode == 0, down.stderr
    # The tap is gone: taking it off the bridge and deleting it have nothing left to do, and the rest is undone.
    assert down.stderr.splitlines() == [
        f"vmrun: asking {name} to power down (ACPI), waiting up to 0.05 s",
        f"vmrun: {name} ignored the powerdown; quitting qemu",
        f"vmrun: {name} stopped (QMP quit)",
    ]
    assert KSM_RUN.read_text().strip() == ksm_restored
    assert_nothing_left(vmrun, name)
