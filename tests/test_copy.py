"""`vmrun cp` against a scripted agent with an in-memory guest: what a failed copy leaves on either side, and
which words name a guest path."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import pytest

from vmrun import copy
from vmrun.copy import GuestPath, endpoints
from vmrun.errors import AgentError, UsageError

from .common import unless_it_hangs
from .fakepeer import FakePeer, Message, answer, refuse

DIRECTORY = 0o040755


class FakeGuest:
    """Files by path, and the few commands cp runs; a write or read after ``fail_after`` chunks is refused."""

    def __init__(self, files: dict[str, bytes], *, fail_after: int | None = None) -> None:
        self.files = files
        self.fail_after = fail_after
        self.chunks = 0
        self.commands: list[list[str]] = []
        self.handles: dict[int, tuple[str, int]] = {}  # handle -> (path, read offset)
        self._last_exit = 0

    def __call__(self, request: Message) -> Iterable[object]:
        command, arguments = request["execute"], request.get("arguments", {})
        if command == "guest-sync":
            return [answer(request, arguments["id"])]
        if command == "guest-info":
            names = ["guest-file-open", "guest-file-close", "guest-file-read", "guest-file-write", "guest-exec",
                     "guest-exec-status"]
            return [answer(request, {"supported_commands": [{"name": name, "enabled": True} for name in names]})]
        if command == "guest-file-open":
            path = arguments["path"]
            if "w" in arguments["mode"]:
                self.files[path] = b""
            elif path not in self.files:
                return [refuse(request, f"failed to open file '{path}' (mode: 'rb'): No such file or directory")]
            self.handles[len(self.handles) + 1] = (path, 0)
            return [answer(request, len(self.handles))]
        if command in ("guest-file-write", "guest-file-read"):
            self.chunks += 1
            if self.fail_after is not None and self.chunks > self.fail_after:
                return [refuse(request, "No space left on device")]
            path, offset = self.handles[arguments["handle"]]
            if command == "guest-file-write":
                data = base64.b64decode(arguments["buf-b64"])
                self.files[path] += data
                return [answer(request, {"count": len(data), "eof": False})]
            data = self.files[path][offset:offset + arguments["count"]]
            self.handles[arguments["handle"]] = (path, offset + len(data))
            return [answer(request, {"count": len(data), "buf-b64": base64.b64encode(data).decode(),
                                     "eof": offset + len(data) >= len(self.files[path])})]
        if command == "guest-file-close":
            return [answer(request, {})]
        if command == "guest-exec":
            return [answer(request, {"pid": self._run([arguments["path"], *arguments["arg"]])})]
        if command == "guest-exec-status":
            out = base64.b64encode(b"81a4\n").decode()  # a regular file, 0644
            return [answer(request, {"exited": True, "exitcode": self._last_exit, "out-data": out})]
        raise AssertionError(f"unscripted {command}")

    def _run(self, argv: list[str]) -> int:
        self.commands.append(argv)
        self._last_exit = 0
        match argv:
            case ["test", "-d", path]:
                self._last_exit = 0 if path == "/tmp" else 1
            case ["rm", "-f", path]:
                self.files.pop(path, None)
            case ["mv", "-f", source, target]:
                self.files[target] = self.files.pop(source)
        return 1


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "qga.sock"


def test_a_failed_upload_removes_its_temporary_file_and_leaves_the_old_one(socket_path: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "CHUNK", 4)
    source = tmp_path / "big"
    source.write_bytes(b"0123456789")
    guest = FakeGuest({"/tmp/big": b"old"}, fail_after=1)
    with FakePeer(socket_path, guest), pytest.raises(AgentError) as failed:
        copy.copy("tiny", source, GuestPath("tiny", "/tmp"), socket_path, agent_timeout=5, say=print)
    assert str(failed.value) == "tiny: the guest agent failed to execute guest-file-write: No space left on device"
    assert failed.value.exit_code == 5
    assert guest.files == {"/tmp/big": b"old"}
    assert guest.commands[-1][:2] == ["rm", "-f"]


def test_an_upload_lands_whole_under_the_destination_name(socket_path: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "CHUNK", 4)
    source = tmp_path / "big"
    source.write_bytes(b"0123456789")
    source.chmod(0o640)
    guest = FakeGuest({})
    with FakePeer(socket_path, guest):
        copy.copy("tiny", source, GuestPath("tiny", "/tmp/renamed"), socket_path, agent_timeout=5, say=print)
    assert guest.files == {"/tmp/renamed": b"0123456789"}
    assert guest.chunks == 3
    [chmod] = [argv for argv in guest.commands if argv[0] == "chmod"]
    assert chmod[1] == "640"


def test_a_failed_download_leaves_nothing_on_the_host(socket_path: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "CHUNK", 4)
    target = tmp_path / "out"
    target.mkdir()
    guest = FakeGuest({"/etc/motd": b"0123456789"}, fail_after=2)
    with FakePeer(socket_path, guest), pytest.raises(AgentError, match="No space left on device"):
        copy.copy("tiny", GuestPath("tiny", "/etc/motd"), target, socket_path, agent_timeout=5, say=print)
    assert list(target.iterdir()) == []


def test_a_download_replaces_a_link_at_the_destination_instead_of_writing_through_it(
        socket_path: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep")
    (tmp_path / "motd").symlink_to(elsewhere)
    with FakePeer(socket_path, FakeGuest({"/etc/motd": b"hello"})):
        copy.copy("tiny", GuestPath("tiny", "/etc/motd"), tmp_path / "motd", socket_path, agent_timeout=5, say=print)
    assert (tmp_path / "motd").read_bytes() == b"hello" and not (tmp_path / "motd").is_symlink()
    assert elsewhere.read_text() == "keep"
    assert (tmp_path / "motd").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("source", "destination", "expected"), [
    ("web:/etc/hosts", "hosts", ("web", GuestPath("web", "/etc/hosts"), Path("hosts"))),
    ("./a:b", "web:/tmp/", ("web", Path("a:b"), GuestPath("web", "/tmp/"))),
    ("/srv/a:b", "db-1:/tmp/x", ("db-1", Path("/srv/a:b"), GuestPath("db-1", "/tmp/x"))),
])
def test_name_colon_path_is_in_the_guest_and_a_slash_before_the_colon_makes_a_host_path(
        source: str, destination: str, expected: tuple[object, ...]) -> None:
    assert endpoints(source, destination) == expected


@pytest.mark.parametrize(("source", "destination", "message"), [
    ("a", "b", "one side of vmrun cp is a guest path NAME:PATH, the other a host path"),
    ("web:/a", "db:/b", "one side of vmrun cp is a guest path NAME:PATH, the other a host path"),
    ("Web:/a", "b", "Web:/a: 'Web' is not a VM name"),
    ("web:etc/hosts", "b", "web:etc/hosts: the guest path must be absolute"),
])
def test_misuse_is_exit_2(source: str, destination: str, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        endpoints(source, destination)
    assert (str(refused.value), refused.value.exit_code) == (message, 2)


def test_a_download_onto_a_fifo_or_device_is_refused_and_leaves_it_alone(socket_path: Path, tmp_path: Path) -> None:
    special = tmp_path / "pipe"  # stands for /dev/null or a disk: root would have replaced the node by a file
    os.mkfifo(special)
    with FakePeer(socket_path, FakeGuest({"/etc/motd": b"hello"})), pytest.raises(UsageError) as refused:
        copy.copy("tiny", GuestPath("tiny", "/etc/motd"), special, socket_path, agent_timeout=5, say=print)
    assert (str(refused.value), refused.value.exit_code) == (f"{special} is not a regular file", 2)
    assert stat.S_ISFIFO(special.lstat().st_mode)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pipe", "qga.sock"]


def test_an_upload_from_a_fifo_is_refused_without_waiting_for_a_writer(socket_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "pipe"
    os.mkfifo(source)
    guest = FakeGuest({})
    with FakePeer(socket_path, guest), unless_it_hangs(), pytest.raises(UsageError) as refused:
        copy.copy("tiny", source, GuestPath("tiny", "/tmp/x"), socket_path, agent_timeout=5, say=print)
    assert (str(refused.value), refused.value.exit_code) == (f"{source} is not a regular file", 2)
    assert guest.files == {}


class LyingGuest(FakeGuest):
    """A guest agent that answers guest-file-read with what it likes."""

    def __init__(self, reply: dict[str, object]) -> None:
        super().__init__({"/etc/motd": b"hello"})
        self.reply = reply

    def __call__(self, request: Message) -> Iterable[object]:
        if request["execute"] == "guest-file-read":
            return [answer(request, self.reply)]
        return super().__call__(request)


@pytest.mark.parametrize(("reply", "message"), [
    ({"count": 5, "buf-b64": base64.b64encode(b"x" * 5).decode(), "eof": False},
     "the guest agent sent 5 bytes for a read of 4"),
    ({"count": 0, "buf-b64": "", "eof": False}, "the guest agent read nothing and no end of /etc/motd"),
    ({"count": 3, "buf-b64": "abc", "eof": True}, "the guest agent answered guest-file-read with data that is not "
                                                  "base64"),
    ({"count": 3, "buf-b64": "a!b=", "eof": True}, "the guest agent answered guest-file-read with data that is not "
                                                   "base64"),
])
def test_a_guest_agent_that_lies_about_a_read_fails_the_copy_at_exit_5(
        socket_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reply: dict[str, object],
        message: str) -> None:
    monkeypatch.setattr(copy, "CHUNK", 4)
    with FakePeer(socket_path, LyingGuest(reply)), unless_it_hangs(), pytest.raises(AgentError) as failed:
        copy.copy("tiny", GuestPath("tiny", "/etc/motd"), tmp_path / "motd", socket_path, agent_timeout=5,
                  say=print)
    assert (str(failed.value), failed.value.exit_code) == (f"tiny: {message}", 5)
    assert list(tmp_path.iterdir()) == [socket_path]
