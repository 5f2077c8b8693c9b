"""The QMP monitor client against a scripted qemu on a real unix socket."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from vmrun.errors import LaunchError
from vmrun.qemu.monitor import Monitor

from .fakepeer import HANG_UP, QMP_GREETING, FakePeer, Message, Script, answer

SHUTDOWN_EVENT = {"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"},
                  "timestamp": {"seconds": 1, "microseconds": 0}}


def qemu(*, honours_powerdown: bool, status: str = "running") -> Script:
    def script(request: Message) -> Iterable[object]:
        command = request["execute"]
        if command == "qmp_capabilities":
            return [answer(request, {})]
        if command == "query-status":
            return [answer(request, {"status": status, "running": status == "running"})]
        if command == "system_powerdown":
            return [answer(request, {}), *([SHUTDOWN_EVENT] if honours_powerdown else [])]
        if command == "quit":
            return [answer(request, {}), HANG_UP]
        raise AssertionError(command)

    return script


def test_handshake_status_and_powerdown_that_the_guest_honours(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    with FakePeer(path, qemu(honours_powerdown=True), greeting=QMP_GREETING) as peer, Monitor(path) as monitor:
        monitor.connect(timeout=5)
        assert monitor.status() == "running"
        assert monitor.powerdown(timeout=5) is True
    assert peer.commands() == ["qmp_capabilities", "query-status", "system_powerdown"]


def test_powerdown_ignored_by_the_guest_returns_false_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    with FakePeer(path, qemu(honours_powerdown=False), greeting=QMP_GREETING), Monitor(path) as monitor:
        monitor.connect(timeout=5)
        assert monitor.powerdown(timeout=0.5) is False


def test_quit_with_qemu_hanging_up_is_success(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    with FakePeer(path, qemu(honours_powerdown=False), greeting=QMP_GREETING) as peer, Monitor(path) as monitor:
        monitor.connect(timeout=5)
        monitor.quit()
    assert peer.commands()[-1] == "quit"


def test_missing_socket_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    with Monitor(path) as monitor, pytest.raises(LaunchError, match=f"cannot connect to qemu's QMP monitor at {path}"):
        monitor.connect(timeout=1)


def test_powerdown_catches_a_shutdown_event_sent_before_the_reply(tmp_path: Path) -> None:
    # qemu may emit SHUTDOWN before it answers system_powerdown: the listener must already be there.
    def eager(request: Message) -> Iterable[object]:
        if request["execute"] == "system_powerdown":
            return [SHUTDOWN_EVENT, answer(request, {})]
        return qemu(honours_powerdown=False)(request)

    path = tmp_path / "qmp.sock"
    with FakePeer(path, eager, greeting=QMP_GREETING), Monitor(path) as monitor:
        monitor.connect(timeout=5)
        assert monitor.powerdown(timeout=5) is True


@pytest.mark.parametrize("replies", [[HANG_UP], [{"return": {}}, HANG_UP]], ids=["before-reply", "after-reply"])
def test_powerdown_counts_qemu_going_away_as_done(tmp_path: Path, replies: list[object]) -> None:
    def exits(request: Message) -> Iterable[object]:
        if request["execute"] == "system_powerdown":
            return [{**reply, "id": request["id"]} if isinstance(reply, dict) else reply for reply in replies]
        return qemu(honours_powerdown=False)(request)

    path = tmp_path / "qmp.sock"
    with FakePeer(path, exits, greeting=QMP_GREETING), Monitor(path) as monitor:
        monitor.connect(timeout=5)
        started = time.monotonic()
        assert monitor.powerdown(timeout=5) is True
        assert time.monotonic() - started < 1


def test_qemu_dying_mid_command_is_a_one_line_launch_error(tmp_path: Path) -> None:
    def dies(request: Message) -> Iterable[object]:
        return [HANG_UP] if request["execute"] == "query-status" else qemu(honours_powerdown=False)(request)

    path = tmp_path / "qmp.sock"
    with FakePeer(path, dies, greeting=QMP_GREETING), Monitor(path) as monitor:
        monitor.connect(timeout=5)
        with pytest.raises(LaunchError) as caught:
            monitor.status()
    assert str(caught.value) == f"qemu's QMP monitor ({path}) hung up before answering query-status"


def jobs(*, concludes_after: int | None, error: str | None = None) -> Script:
    """qemu running one job: query-jobs says it runs, then (after that many asks) that it concluded."""
    asked = 0

    def script(request: Message) -> Iterable[object]:
        nonlocal asked
        if request["execute"] == "query-jobs":
            asked += 1
            done = concludes_after is not None and asked > concludes_after
            job = {"id": "j", "type": "snapshot-save", "status": "concluded" if done else "running",
                   **({"error": error} if done and error else {})}
            return [answer(request, [job])]
        return [answer(request, {})]

    return script


def test_a_job_is_polled_until_it_concludes_then_dismissed(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    with FakePeer(path, jobs(concludes_after=2), greeting=QMP_GREETING) as peer, Monitor(path) as monitor:
        monitor.connect(timeout=5)
        monitor.run_job("snapshot-save", {"tag": "t"}, job_id="j", what="save snapshot 't'", timeout=5)
    assert peer.commands()[1:] == ["snapshot-save", "query-jobs", "query-jobs", "query-jobs", "job-dismiss"]
    assert peer.received[1]["arguments"] == {"job-id": "j", "tag": "t"}


def test_a_job_that_failed_is_qemus_error_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    with FakePeer(path, jobs(concludes_after=0, error="Device 'data' is writable but does not support snapshots"),
                  greeting=QMP_GREETING) as peer, Monitor(path) as monitor:
        monitor.connect(timeout=5)
        with pytest.raises(LaunchError) as failed:
            monitor.run_job("snapshot-save", {}, job_id="j", what="save snapshot 't'", timeout=5)
    assert str(failed.value) == "qemu failed to save snapshot 't': Device 'data' is writable but does not support " \
                                "snapshots"
    assert failed.value.exit_code == 4 and peer.commands()[-1] == "job-dismiss"


def test_a_job_that_never_concludes_is_given_up_at_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    with FakePeer(path, jobs(concludes_after=None), greeting=QMP_GREETING), Monitor(path) as monitor:
        monitor.connect(timeout=5)
        started = time.monotonic()
        with pytest.raises(LaunchError, match=r"^qemu did not load snapshot 't' within 0.5 s$") as failed:
            monitor.run_job("snapshot-load", {}, job_id="j", what="load snapshot 't'", timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 3
    assert failed.value.hint == "the job j goes on in qemu; --timeout waits longer"
