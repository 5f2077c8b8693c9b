"""Stopping qemu step by step: ACPI powerdown, then quit, then SIGTERM, then SIGKILL, each step only when the
one before left qemu running. qemu is a scripted QMP peer and a fake process in a fake /proc that exits at
the step the test says (fake: a real qemu that ignores quit and SIGTERM cannot be made to order). And when a
qemu counts as gone: the moment `down` and a failed `up` may undo the taps and devices it held."""

from __future__ import annotations

import resource
import shutil
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import attrs
import pytest

from vmrun.errors import LaunchError
from vmrun.host.system import Host
from vmrun.qemu.process import is_gone, start_daemon, stop
from vmrun.state.locations import RunPaths

from .fakehost import put
from .fakepeer import HANG_UP, QMP_GREETING, FakePeer, Message, Script, answer

NAME = "web"
PID = 4242
SHUTDOWN_EVENT = {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"},
                  "timestamp": {"seconds": 1, "microseconds": 0}}


def test_a_daemon_that_fails_to_start_says_why_in_its_own_words() -> None:
    with pytest.raises(LaunchError, match="^-accel kvm: no /dev/kvm$"):
        start_daemon(["sh", "-c", "echo '-accel kvm: no /dev/kvm' >&2; exit 1"], memlock=None, timeout=10)
    with pytest.raises(LaunchError, match="no-such-qemu not found"):
        start_daemon(["no-such-qemu"], memlock=None, timeout=10)


def test_a_daemon_starts_with_the_memlock_limit_it_asks_for() -> None:
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    # Half of what vmrun has: a limit it may always set, and one the child could not inherit.
    limit = (128 * 2**20 if soft == resource.RLIM_INFINITY else soft) // 2 // 1024 * 1024
    with pytest.raises(LaunchError, match=f"^{limit // 1024}$"):  # ulimit -l counts KiB
        start_daemon(["sh", "-c", "ulimit -l >&2; exit 1"], memlock=limit, timeout=10)


def test_a_daemon_start_that_never_returns_is_killed_at_its_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(LaunchError, match="did not finish starting within 0.3 s"):
        start_daemon(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], memlock=None, timeout=0.3)
    assert not Path(f"/proc/{pidfile.read_text().strip()}").exists()


def test_qemu_is_launched_through_sh_without_a_terminal(tmp_path: Path) -> None:
    """The launcher is the `sh` library, asked for no terminal: qemu's -daemonize has no use for one."""
    seen = tmp_path / "seen"
    start_daemon(["sh", "-c", f"for fd in 0 1 2; do test -t $fd && echo $fd; done > {seen}; true"], memlock=None,
                 timeout=10)
    assert "sh" in sys.modules
    assert seen.read_text() == ""


@attrs.frozen
class FakeProcess(Host):
    """A host whose only process is one qemu in the fake /proc, ended by the signals in `dies_on`."""

    dies_on: frozenset[int] = frozenset()
    sent: list[str] = attrs.field(factory=list)

    def start(self) -> None:
        proc = self.path(f"/proc/{PID}")
        proc.mkdir(parents=True)
        (proc / "stat").write_text(f"{PID} (qemu-system-x86) S 1 1 1 0")
        (proc / "cmdline").write_bytes(f"qemu-system-x86_64\0-name\0guest={NAME},process=vmrun-{NAME}\0".encode())

    def exit(self) -> None:
        shutil.rmtree(self.path(f"/proc/{PID}"))

    def signal(self, pid: int, number: int) -> None:
        assert pid == PID
        self.sent.append(signal.Signals(number).name)
        if number in self.dies_on:
            self.exit()


def qemu(process: FakeProcess, *, exits_on: str | None) -> Script:
    """QMP as qemu speaks it; exits_on: the command at which qemu exits (system_powerdown: the guest
    honours the power button)."""

    def script(request: Message) -> Iterable[object]:
        command = request["execute"]
        if command in ("qmp_capabilities", "quit", "system_powerdown"):
            replies: list[object] = [answer(request, {})]
            if command == exits_on:
                process.exit()
                replies += [SHUTDOWN_EVENT, HANG_UP] if command == "system_powerdown" else [HANG_UP]
            return replies
        raise AssertionError(command)

    return script


@pytest.fixture(autouse=True)
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each step's wait is spent in full only when the fake qemu ignores that step.
    monkeypatch.setattr("vmrun.qemu.process.KILL_WAIT", 0.3)


def stopped(tmp_path: Path, *, exits_on: str | None = None, dies_on: frozenset[int] = frozenset(),
            force: bool = False, monitor: bool = True) -> tuple[str, list[str], list[str], FakeProcess]:
    process = FakeProcess(root=tmp_path / "host", dies_on=dies_on)
    process.start()
    paths = RunPaths(run_dir=tmp_path / "run", state_dir=tmp_path / "state")
    paths.run_dir.mkdir()
    paths.pidfile.write_text(f"{PID}\n")
    said: list[str] = []
    if not monitor:
        return stop(process, paths, NAME, timeout=0.3, force=force, say=said.append), said, [], process
    with FakePeer(paths.qmp_socket, qemu(process, exits_on=exits_on), greeting=QMP_GREETING) as peer:
        how = stop(process, paths, NAME, timeout=0.3, force=force, say=said.append)
    return how, said, peer.commands(), process


ASKING = f"asking {NAME} to power down (ACPI), waiting up to 0.3 s"
IGNORED = f"{NAME} ignored the powerdown; quitting qemu"


def test_fake_qemu_whose_guest_honours_the_power_button_ends_at_the_first_step(tmp_path: Path) -> None:
    how, said, commands, process = stopped(tmp_path, exits_on="system_powerdown")
    assert (how, said, commands, process.sent) == (
        "ACPI powerdown", [ASKING], ["qmp_capabilities", "system_powerdown"], [])


def test_fake_qemu_powerdown_ignored_then_quit(tmp_path: Path) -> None:
    how, said, commands, process = stopped(tmp_path, exits_on="quit")
    assert (how, said, commands, process.sent) == (
        "QMP quit", [ASKING, IGNORED], ["qmp_capabilities", "system_powerdown", "quit"], [])


def test_fake_qemu_powerdown_and_quit_ignored_then_sigterm(tmp_path: Path) -> None:
    how, said, commands, process = stopped(tmp_path, dies_on=frozenset({signal.SIGTERM}))
    assert (how, said, commands, process.sent) == (
        "SIGTERM", [ASKING, IGNORED], ["qmp_capabilities", "system_powerdown", "quit"], ["SIGTERM"])


def test_fake_qemu_sigterm_ignored_too_then_sigkill(tmp_path: Path) -> None:
    how, said, _, process = stopped(tmp_path, dies_on=frozenset({signal.SIGKILL}))
    assert (how, said, process.sent) == ("SIGKILL", [ASKING, IGNORED], ["SIGTERM", "SIGKILL"])


def test_fake_qemu_that_survives_sigkill_is_an_error_naming_its_pid(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=f"^qemu \\(pid {PID}\\) survived SIGKILL$"):
        stopped(tmp_path)


def test_fake_qemu_force_skips_the_powerdown(tmp_path: Path) -> None:
    how, said, commands, _ = stopped(tmp_path, exits_on="quit", force=True)
    assert (how, said, commands) == ("QMP quit", [], ["qmp_capabilities", "quit"])


def test_fake_qemu_without_a_monitor_is_signalled(tmp_path: Path) -> None:
    how, said, _, process = stopped(tmp_path, dies_on=frozenset({signal.SIGTERM}), monitor=False)
    assert how == "SIGTERM" and process.sent == ["SIGTERM"]
    [unavailable] = said
    assert unavailable.startswith("QMP unavailable (cannot connect to qemu's QMP monitor at ")
    assert unavailable.endswith("); signalling qemu")


def test_fake_proc_a_zombie_or_a_recycled_pid_is_already_gone(tmp_path: Path) -> None:
    process = FakeProcess(root=tmp_path / "host")
    process.start()
    process.path(f"/proc/{PID}/stat").write_text(f"{PID} (qemu-system-x86) Z 1 1 1 0")
    paths = RunPaths(run_dir=tmp_path / "run", state_dir=tmp_path / "state")
    paths.run_dir.mkdir()
    paths.pidfile.write_text(f"{PID}\n")
    assert stop(process, paths, NAME, timeout=0.3, force=False, say=print) == "already gone"
    process.path(f"/proc/{PID}/stat").write_text(f"{PID} (sshd) S 1 1 1 0")
    process.path(f"/proc/{PID}/cmdline").write_bytes(b"/usr/sbin/sshd\0-D\0")
    assert stop(process, paths, NAME, timeout=0.3, force=False, say=print) == "already gone"
    assert process.sent == []


def qemu_process(root: Path, state: str, *, threads: tuple[int, ...]) -> None:
    put(root, f"/proc/{PID}/stat", f"{PID} (qemu-system-x86) {state} 1 {PID} {PID} 0 -1")
    put(root, f"/proc/{PID}/cmdline", "" if state == "Z" else "qemu\0-name\0guest=db,process=vmrun-db\0")
    for thread in threads:
        put(root, f"/proc/{PID}/task/{thread}/stat", f"{thread} (qemu-system-x86) {state}")


def test_a_zombie_qemu_is_gone_once_its_other_threads_have_ended_on_a_fake_host(tmp_path: Path) -> None:
    """The main thread turns zombie first; another thread may still hold the taps (a real qemu killed
    with SIGKILL does so about one time in three, and `ip tuntap del` then fails)."""
    host = Host(root=tmp_path)
    qemu_process(tmp_path, "Z", threads=(PID, PID + 8))
    assert not is_gone(host, PID, "db")
    shutil.rmtree(tmp_path / f"proc/{PID}/task/{PID + 8}")
    assert is_gone(host, PID, "db")


def test_a_running_qemu_is_not_gone_and_a_missing_or_other_process_is_on_a_fake_host(tmp_path: Path) -> None:
    host = Host(root=tmp_path)
    qemu_process(tmp_path, "S", threads=(PID, PID + 8))
    assert not is_gone(host, PID, "db")
    assert is_gone(host, PID, "web")  # the pid now runs another VM's qemu
    assert is_gone(host, PID + 1, "db")


@attrs.frozen
class Daemonizing(Host):
    """A host where a killed launch left qemu's parent and its daemon child, both with the run's argv and
    no pidfile yet; each ends on SIGTERM."""

    argv: tuple[str, ...] = ()
    sent: list[tuple[int, str]] = attrs.field(factory=list)

    def start(self, *pids: int) -> None:
        for pid in pids:
            proc = self.path(f"/proc/{pid}")
            proc.mkdir(parents=True)
            (proc / "stat").write_text(f"{pid} (qemu-system-x86) S 1 1 1 0")
            (proc / "cmdline").write_bytes("".join(f"{arg}\0" for arg in self.argv).encode())

    def signal(self, pid: int, number: int) -> None:
        self.sent.append((pid, signal.Signals(number).name))
        if number == signal.SIGTERM:
            shutil.rmtree(self.path(f"/proc/{pid}"))


def test_down_force_after_a_kill_during_the_launch_stops_the_daemon_and_its_parent(tmp_path: Path) -> None:
    paths = RunPaths(run_dir=tmp_path / "run", state_dir=tmp_path / "state")
    paths.run_dir.mkdir()
    host = Daemonizing(root=tmp_path / "host", argv=(
        "qemu-system-x86_64", "-name", f"guest={NAME},process=vmrun-{NAME}", "-pidfile", str(paths.pidfile)))
    host.start(PID, PID + 1)
    how = stop(host, paths, NAME, timeout=0.3, force=True, say=[].append)
    assert (how, host.sent) == ("SIGTERM", [(PID, "SIGTERM"), (PID + 1, "SIGTERM")])
    assert host.process_ids() == []
