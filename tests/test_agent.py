"""The guest-agent client against a scripted agent on a real unix socket."""

from __future__ import annotations

import base64
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from vmrun.errors import AgentError
from vmrun.guest.agent import GuestAgent, addresses_by_interface

from .fakepeer import HANG_UP, FakePeer, Message, Script, answer, refuse


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "qga.sock"


def syncing(request: Message) -> Iterable[object]:
    """The part every scripted agent shares: guest-sync echoes its id."""
    if request["execute"] == "guest-sync":
        return [answer(request, request["arguments"]["id"])]
    raise AssertionError(f"unscripted {request['execute']}")


def test_no_greeting_and_stale_replies_are_discarded_until_the_sync_id_returns(socket_path: Path) -> None:
    requests = itertools.count()

    def agent(request: Message) -> Iterable[object]:
        # The first reply answers an earlier client's sync that used the same message id.
        return [answer(request, 12345)] if next(requests) == 0 else syncing(request)

    with FakePeer(socket_path, agent) as peer, GuestAgent(socket_path) as client:
        assert client.wait_ready(timeout=5) < 5
        assert peer.commands() == ["guest-sync", "guest-sync"]


def test_a_sync_the_agent_took_and_never_answered_is_joined_by_another(
    socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # qemu-ga read them and died before answering; the one it restarted with answers the third.
    monkeypatch.setattr("vmrun.guest.agent.SYNC_FIRST_RESEND", 0.05)
    lost = itertools.count()

    def agent(request: Message) -> Iterable[object]:
        return [] if next(lost) < 2 else syncing(request)

    with FakePeer(socket_path, agent) as peer, GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        assert (peer.connections, peer.commands()) == (1, ["guest-sync"] * 3)


def wait_in_slices(client: GuestAgent, until: float) -> None:
    """As `up` waits: short waits, one after another, until the agent answers or time is up."""
    while time.monotonic() < until:
        with contextlib.suppress(AgentError):
            client.wait_ready(timeout=0.02)
            return


def test_the_sync_sent_before_the_agent_runs_is_the_one_it_answers(socket_path: Path) -> None:
    """qemu keeps what is written to the agent's port until qemu-ga reads it, and qemu-ga answers it
    when it starts: one sync on one connection is enough, however many waits it takes."""

    def agent(request: Message) -> Iterable[object]:
        time.sleep(0.5)  # qemu-ga starts, and reads what qemu kept
        return syncing(request)

    with FakePeer(socket_path, agent) as peer, GuestAgent(socket_path) as client:
        wait_in_slices(client, time.monotonic() + 10)
        assert (peer.connections, peer.commands()) == (1, ["guest-sync"])


def test_a_long_wait_for_an_agent_that_never_runs_ends_and_leaves_a_handful_of_syncs(
    socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # qemu reads nothing from the socket until qemu-ga opens its port. A sync per wait filled the socket
    # within minutes (a second here), and then closing the connection hung for good.
    monkeypatch.setattr("vmrun.guest.agent.SYNC_FIRST_RESEND", 0.01)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(socket_path))
        listener.listen()
        client = GuestAgent(socket_path)
        wait_in_slices(client, time.monotonic() + 1)
        closing = threading.Thread(target=client.close, daemon=True)
        closing.start()
        closing.join(timeout=10)
        assert not closing.is_alive()
        qemu_side, _ = listener.accept()
        with qemu_side:
            kept = b"".join(iter(lambda: qemu_side.recv(65536), b""))
    assert 1 <= kept.count(b'"guest-sync"') <= 15


def test_socket_that_appears_later_is_waited_for(socket_path: Path) -> None:
    peers: list[FakePeer] = []
    timer = threading.Timer(0.5, lambda: peers.append(FakePeer(socket_path, syncing)))
    timer.start()
    try:
        with GuestAgent(socket_path) as client:
            assert 0.4 < client.wait_ready(timeout=10) < 10
    finally:
        timer.join()
        for peer in peers:
            peer.close()


def test_wait_ready_gives_up_after_its_timeout(socket_path: Path) -> None:
    silent = socket_path.with_name("silent.sock")
    with FakePeer(silent, lambda request: []), GuestAgent(silent) as client:
        started = time.monotonic()
        with pytest.raises(AgentError, match="the guest agent did not answer within 0.5 s"):
            client.wait_ready(timeout=0.5)
        assert time.monotonic() - started < 2


def exec_agent(statuses: Iterator[dict[str, object]]) -> tuple[list[Message], Script]:
    seen: list[Message] = []

    def agent(request: Message) -> Iterable[object]:
        seen.append(request)
        if request["execute"] == "guest-exec":
            return [answer(request, {"pid": 42})]
        if request["execute"] == "guest-exec-status":
            assert request["arguments"] == {"pid": 42}
            return [answer(request, next(statuses))]
        return syncing(request)

    return seen, agent


def test_exec_polls_until_exited_and_decodes_output(socket_path: Path) -> None:
    statuses: Iterator[dict[str, object]] = iter([{"exited": False}, {"exited": False},
                     {"exited": True, "exitcode": 3, "out-data": b64(b"out\n"), "err-data": b64(b"err\n")}])
    seen, agent = exec_agent(statuses)
    with FakePeer(socket_path, agent), GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        result = client.exec(["sh", "-c", "exit 3"], timeout=5, stdin=b"input")
    assert (result.exitcode, result.stdout, result.stderr, result.ok) == (3, b"out\n", b"err\n", False)
    [start] = [request for request in seen if request["execute"] == "guest-exec"]
    assert start["arguments"] == {"path": "sh", "arg": ["-c", "exit 3"], "capture-output": True,
                                  "input-data": b64(b"input")}
    assert [r["execute"] for r in seen].count("guest-exec-status") == 3


def test_spawn_starts_a_job_that_captures_nothing_and_asks_no_status(socket_path: Path) -> None:
    seen, agent = exec_agent(iter([]))
    with FakePeer(socket_path, agent), GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        pid = client.spawn(["/usr/bin/setsid", "sh", "-c", "sleep 9"], env=["PATH=/bin"])
    [start] = [request for request in seen if request["execute"] == "guest-exec"]
    assert start["arguments"] == {"path": "/usr/bin/setsid", "arg": ["sh", "-c", "sleep 9"], "capture-output": False,
                                  "env": ["PATH=/bin"]}
    assert isinstance(pid, int) and "guest-exec-status" not in [r["execute"] for r in seen]


def test_exec_reports_signals_and_truncation(socket_path: Path) -> None:
    killed: dict[str, object] = {"exited": True, "signal": 9, "out-data": b64(b"x" * 10), "out-truncated": True}
    statuses = iter([killed])
    _, agent = exec_agent(statuses)
    with FakePeer(socket_path, agent), GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        result = client.exec(["yes"], timeout=5)
    assert (result.exitcode, result.signal, result.stdout_truncated, result.stderr_truncated) == (None, 9, True, False)


def test_exec_that_outlives_its_timeout_fails_naming_the_command(socket_path: Path) -> None:
    still_running: dict[str, object] = {"exited": False}
    _, agent = exec_agent(itertools.repeat(still_running))
    with FakePeer(socket_path, agent), GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        with pytest.raises(AgentError, match="`sleep 100` did not finish within 0.3 s in the guest"):
            client.exec(["sleep", "100"], timeout=0.3)


def test_exec_of_a_missing_program_is_an_agent_error(socket_path: Path) -> None:
    def agent(request: Message) -> Iterable[object]:
        if request["execute"] == "guest-exec":
            return [refuse(request, "Guest agent command failed, error was 'Failed to execute child process "
                                    "“nope” (No such file or directory)'")]
        return syncing(request)

    with FakePeer(socket_path, agent), GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        with pytest.raises(AgentError, match="failed to run `nope`: .*No such file or directory"):
            client.exec(["nope"], timeout=5)


def test_disabled_guest_exec_is_said_plainly(socket_path: Path) -> None:
    def agent(request: Message) -> Iterable[object]:
        if request["execute"] == "guest-info":
            return [answer(request, {"version": "7.2", "supported_commands": [
                {"name": "guest-exec", "enabled": False}, {"name": "guest-exec-status", "enabled": True},
            ]})]
        return syncing(request)

    with FakePeer(socket_path, agent), GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        with pytest.raises(AgentError) as caught:
            client.require("guest-exec", "guest-exec-status", purpose="to run post_boot hooks")
    assert str(caught.value) == ("the guest agent has guest-exec disabled (qemu-ga --block-rpcs / --allow-rpcs); "
                                 "vmrun needs it to run post_boot hooks")


def test_interface_by_mac_ignores_case(socket_path: Path) -> None:
    def agent(request: Message) -> Iterable[object]:
        if request["execute"] == "guest-network-get-interfaces":
            return [answer(request, [
                {"name": "lo", "hardware-address": "00:00:00:00:00:00"},
                {"name": "eth0", "hardware-address": "52:54:00:AB:CD:EF",
                 "ip-addresses": [{"ip-address": "10.0.2.15", "ip-address-type": "ipv4", "prefix": 24}]},
            ])]
        return syncing(request)

    with FakePeer(socket_path, agent), GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        interface = client.interface_by_mac("52:54:00:ab:cd:ef")
    assert interface is not None and (interface.name, interface.addresses) == ("eth0", ("10.0.2.15/24",))


def test_an_id_less_error_drops_the_connection_and_wait_ready_reconnects(socket_path: Path) -> None:
    # qemu-ga answers bytes it cannot parse (left by a killed client) with an error without an id;
    # qemu.qmp cannot route that and drops the connection instead of discarding the message.
    def agent(request: Message) -> Iterable[object]:
        if peer.connections == 1:
            return [{"error": {"class": "GenericError", "desc": "JSON parse error, invalid literal"}}]
        return syncing(request)

    with FakePeer(socket_path, agent) as peer, GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        assert peer.connections == 2


def test_wait_ready_on_a_missing_socket_says_so_in_the_hint(socket_path: Path) -> None:
    with GuestAgent(socket_path) as client, pytest.raises(AgentError) as caught:
        client.wait_ready(timeout=1.5)  # long enough for a loaded machine to get one attempt through
    assert caught.value.hint is not None
    assert f"cannot connect to the guest agent at {socket_path}: No such file or directory" in caught.value.hint


def test_an_agent_hanging_up_mid_command_is_an_agent_error(socket_path: Path) -> None:
    def agent(request: Message) -> Iterable[object]:
        return [HANG_UP] if request["execute"] == "guest-exec" else syncing(request)

    with FakePeer(socket_path, agent), GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        with pytest.raises(AgentError) as caught:
            client.exec(["true"], timeout=5)
    assert str(caught.value) == f"the guest agent ({socket_path}) hung up before answering guest-exec"


def shutdown_agent(*replies: object) -> Script:
    def agent(request: Message) -> Iterable[object]:
        if request["execute"] == "guest-shutdown":
            assert request["arguments"] == {"mode": "powerdown"}
            return [message if message is HANG_UP else refuse(request, str(message)) for message in replies]
        return syncing(request)

    return agent


@pytest.mark.parametrize("replies", [(), (HANG_UP,)], ids=["silence", "hang-up"])
def test_shutdown_is_taken_on_silence_or_a_hang_up(socket_path: Path, replies: tuple[object, ...]) -> None:
    with FakePeer(socket_path, shutdown_agent(*replies)) as peer, GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        started = time.monotonic()
        client.shutdown(grace=0.3)
        assert time.monotonic() - started < 0.6
        assert peer.commands()[-1] == "guest-shutdown"


def test_shutdown_refused_by_the_guest_is_an_agent_error(socket_path: Path) -> None:
    with FakePeer(socket_path, shutdown_agent("child process has failed to shutdown")), \
            GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        with pytest.raises(AgentError, match="^the guest agent refused guest-shutdown: child process has failed"):
            client.shutdown(grace=5)


def test_status_addresses_are_per_interface_with_prefixes_and_without_loopback(socket_path: Path) -> None:
    def agent(request: Message) -> Iterable[object]:
        if request["execute"] == "guest-network-get-interfaces":
            return [answer(request, [
                {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "prefix": 8},
                                                {"ip-address": "::1", "prefix": 128}]},
                {"name": "eth0", "hardware-address": "52:54:00:ab:cd:ef",
                 "ip-addresses": [{"ip-address": "10.0.2.15", "prefix": 24},
                                  {"ip-address": "fe80::5054:ff:feab:cdef", "prefix": 64}]},
                {"name": "eth1", "hardware-address": "52:54:00:ab:cd:f0"},
            ])]
        return syncing(request)

    with FakePeer(socket_path, agent), GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        addresses = addresses_by_interface(client.interfaces())
    assert addresses == {"eth0": ["10.0.2.15/24", "fe80::5054:ff:feab:cdef/64"]}


ETH0 = {"name": "eth0", "hardware-address": "52:54:00:ab:cd:ef",
        "ip-addresses": [{"ip-address": "10.0.2.15", "prefix": 24}]}


def test_status_asks_an_agent_its_interfaces_in_one_round_trip(socket_path: Path) -> None:
    held: list[Message] = []

    def agent(request: Message) -> Iterable[object]:
        # The sync is answered only once the question has come too: a client waiting for it first would time out.
        if request["execute"] == "guest-sync":
            held.append(request)
            return []
        return [answer(held[0], held[0]["arguments"]["id"]), answer(request, [ETH0])]

    with FakePeer(socket_path, agent) as peer, GuestAgent(socket_path) as client:
        interfaces = client.interfaces_at_once(timeout=2)
    assert interfaces is not None and [(i.name, i.addresses) for i in interfaces] == [("eth0", ("10.0.2.15/24",))]
    assert peer.commands() == ["guest-sync", "guest-network-get-interfaces"]


def test_a_stale_answer_to_the_sync_sends_status_the_long_way(socket_path: Path) -> None:
    requests = itertools.count()

    def agent(request: Message) -> Iterable[object]:
        if next(requests) == 0:  # an earlier client's sync, answered now: its id collides with ours
            return [answer(request, 12345)]
        if request["execute"] == "guest-network-get-interfaces":
            return [answer(request, [ETH0])]
        return syncing(request)

    with FakePeer(socket_path, agent) as peer, GuestAgent(socket_path) as client:
        interfaces = client.interfaces_at_once(timeout=2)
    assert interfaces is not None and [i.name for i in interfaces] == ["eth0"]
    assert peer.commands() == ["guest-sync", "guest-network-get-interfaces", "guest-sync",
                               "guest-network-get-interfaces"]


def test_an_agent_that_refuses_the_interfaces_still_answers_and_a_silent_one_does_not(socket_path: Path) -> None:
    def refusing(request: Message) -> Iterable[object]:
        if request["execute"] == "guest-network-get-interfaces":
            return [refuse(request, "Command guest-network-get-interfaces has been disabled")]
        return syncing(request)

    with FakePeer(socket_path, refusing), GuestAgent(socket_path) as client:
        assert client.interfaces_at_once(timeout=2) is None
    silent = socket_path.with_name("silent.sock")
    with FakePeer(silent, lambda request: []), GuestAgent(silent) as client:
        started = time.monotonic()
        with pytest.raises(AgentError):
            client.interfaces_at_once(timeout=0.3)
    assert time.monotonic() - started < 2


def test_addresses_a_lying_guest_reports_are_dropped_and_its_interface_names_cannot_drive_the_terminal(
        socket_path: Path) -> None:
    """status prints these and vmrun ssh dials them: what is no IP address, or a prefix no IP has, is left out."""
    def agent(request: Message) -> Iterable[object]:
        if request["execute"] == "guest-network-get-interfaces":
            return [answer(request, [
                {"name": "eth0\x1b[2J", "hardware-address": "52:54:00:ab:cd:ef",
                 "ip-addresses": [{"ip-address": "-oProxyCommand=touch /tmp/x", "prefix": 24},
                                  {"ip-address": "10.0.2.15", "prefix": 99},
                                  {"ip-address": "10.0.2.16", "prefix": 24}]},
            ])]
        return syncing(request)

    with FakePeer(socket_path, agent), GuestAgent(socket_path) as client:
        client.wait_ready(timeout=5)
        addresses = addresses_by_interface(client.interfaces())
    assert addresses == {"'eth0\\x1b[2J'": ["10.0.2.16/24"]}


def exec_peer(status: Message) -> Script:
    """An agent whose one command ends with ``status`` (out-data: the input-data it was given)."""

    def script(request: Message) -> Iterable[object]:
        if request["execute"] == "guest-exec":
            return [answer(request, {"pid": 7})]
        if request["execute"] == "guest-exec-status":
            given = next(sent for sent in peer_requests if sent["execute"] == "guest-exec")["arguments"]
            return [answer(request, {"exited": True, "out-data": given.get("input-data", ""), **status})]
        return syncing(request)

    peer_requests: list[Message] = []

    def recording(request: Message) -> Iterable[object]:
        peer_requests.append(request)
        return script(request)

    return recording


def test_exec_sends_stdin_as_input_data_and_exits_with_the_commands_code(
        socket_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmrun.cli.guest_commands import exec_in_guest

    with FakePeer(socket_path, exec_peer({"exitcode": 3})):
        code = exec_in_guest("web", socket_path, ["cat"], stdin=b"from the host\n", timeout=5, agent_timeout=5)
    assert (code, capsys.readouterr().out) == (3, "from the host\n")


def test_exec_without_an_exit_code_is_exit_5_saying_so(socket_path: Path) -> None:
    from vmrun.cli.guest_commands import exec_in_guest

    with FakePeer(socket_path, exec_peer({})), pytest.raises(AgentError) as failed:
        exec_in_guest("web", socket_path, ["true"], stdin=None, timeout=5, agent_timeout=5)
    assert (str(failed.value), failed.value.exit_code) == (
        "web: `true` ended, but the guest agent reported neither its exit code nor a signal", 5)


@pytest.mark.parametrize(("words", "command", "timeout", "as_json"), [
    (["exec", "web", "--json", "--timeout", "5", "--", "ls", "-l"], ["--", "ls", "-l"], 5.0, True),
    (["exec", "--timeout", "5", "web", "--", "ls", "-l"], ["ls", "-l"], 5.0, False),
    (["exec", "web", "--", "ls", "--json"], ["ls", "--json"], 60.0, False),
])
def test_exec_reads_its_options_before_or_after_name_and_leaves_the_commands_alone(
        words: list[str], command: list[str], timeout: float, as_json: bool) -> None:
    from vmrun.cli.arguments import exec_options, options_after_name
    from vmrun.cli.parser import build_parser

    args = options_after_name(build_parser().parse_args(words), exec_options)
    assert (args.command_line, args.timeout, args.json) == (command, timeout, as_json)
