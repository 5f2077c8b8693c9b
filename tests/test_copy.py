"""`vmrun cp` against a scripted agent with an in-memory guest: what a failed copy leaves on either side, and
which words name a guest path."""

from __future__ import annotations

import base64
import contextlib
import os
import posixpath
import stat
from collections.abc import Iterable
from pathlib import Path

import pytest

from vmrun.errors import AgentError, UsageError
from vmrun.guest import copy, copytree, cp
from vmrun.guest.copy import GuestPath
from vmrun.guest.cp import endpoints

from .common import unless_it_hangs
from .fakepeer import FakePeer, Message, answer, refuse

DIRECTORY = 0o040755


class FakeGuest:
    """Files, directories and links by path, and the few commands cp runs; a write or read after ``fail_after``
    chunks is refused. ``listing`` replaces what the guest's find prints, as a lying guest would."""

    def __init__(self, files: dict[str, bytes], *, fail_after: int | None = None,
                 directories: Iterable[str] = ("/", "/tmp"), links: dict[str, str] | None = None,
                 fifos: Iterable[str] = (), listing: bytes | None = None) -> None:
        self.files = files
        self.modes = {path: 0o755 for path in directories} | {path: 0o644 for path in files}
        self.directories = set(directories)
        self.links = links or {}
        self.fifos = set(fifos)
        self.listing = listing
        self.fail_after = fail_after
        self.chunks = 0
        self.commands: list[list[str]] = []
        self.handles: dict[int, tuple[str, int]] = {}  # handle -> (path, read offset)
        self._last: tuple[int, bytes] = (0, b"")

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
                self.modes[path] = 0o666
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
            self._last = self._run([arguments["path"], *arguments["arg"]])
            return [answer(request, {"pid": 1})]
        if command == "guest-exec-status":
            exitcode, out = self._last
            return [answer(request, {"exited": True, "exitcode": exitcode, "out-data": base64.b64encode(out).decode()})]
        raise AssertionError(f"unscripted {command}")

    def _run(self, argv: list[str]) -> tuple[int, bytes]:
        self.commands.append(argv)
        match argv:
            case ["test", "-d", path]:
                return int(posixpath.normpath(path) not in self.directories), b""
            case ["sh", "-c", 'test -e "$1" || test -L "$1"', "sh", path]:
                return int(path not in self._paths()), b""
            case ["sh", "-c", copytree.LIST_SCRIPT, "sh", top]:
                return 0, self._list(posixpath.normpath(top)) if self.listing is None else self.listing
            case ["stat", "-L", "-c", "%f", path]:
                kind = stat.S_IFDIR if path in self.directories else stat.S_IFREG
                return 0, f"{kind | self.modes.get(path, 0o644):x}\n".encode()
            case ["readlink", "-n", path]:
                return 0, self.links[path].encode()
            case ["rm", "-rf", path]:
                for name in [name for name in self._paths() if name == path or name.startswith(path + "/")]:
                    self._forget(name)
            case ["mv", *options, source, target]:
                if "-T" in options and target in self.directories:
                    return 1, b""  # mv -T: cannot overwrite a directory with a non-directory
                if "-T" not in options and target in self.directories:
                    target = posixpath.join(target, posixpath.basename(source))  # mv moves into a directory
                for name in sorted(name for name in self._paths() if name == source or name.startswith(source + "/")):
                    self._move(name, target + name[len(source):])
            case ["mkdir", *paths]:
                self.directories.update(paths)
                self.modes.update(dict.fromkeys(paths, 0o755))
            case ["chmod", mode, *paths]:
                self.modes.update(dict.fromkeys(paths, int(mode, 8)))
            case ["ln", "-s", "--", target, path]:
                self.links[path] = target
        return 0, b""

    def _paths(self) -> set[str]:
        return self.directories | set(self.files) | set(self.links) | self.fifos

    def _forget(self, path: str) -> None:
        self.directories.discard(path)
        self.files.pop(path, None)
        self.links.pop(path, None)
        self.modes.pop(path, None)

    def _move(self, source: str, target: str) -> None:
        if source in self.directories:
            self.directories.add(target)
        elif source in self.files:
            self.files[target] = self.files[source]
        else:
            self.links[target] = self.links[source]
        if source in self.modes:
            self.modes[target] = self.modes[source]
        self._forget(source)

    def _list(self, top: str) -> bytes:
        records = []
        for path in sorted(name for name in self._paths() if name == top or name.startswith(top + "/")):
            kind = (stat.S_IFDIR if path in self.directories else stat.S_IFREG if path in self.files
                    else stat.S_IFLNK if path in self.links else stat.S_IFIFO)
            mode = kind | self.modes.get(path, 0o777)
            records.append(f"{mode:x}\n.{path[len(top):]}\0".encode())
        return b"".join(records)


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
        cp.copy("tiny", source, GuestPath("tiny", "/tmp"), socket_path, agent_timeout=5, say=print)
    assert str(failed.value) == "tiny: the guest agent failed to execute guest-file-write: No space left on device"
    assert failed.value.exit_code == 5
    assert guest.files == {"/tmp/big": b"old"}
    assert guest.commands[-1][:2] == ["rm", "-rf"]


def test_an_upload_lands_whole_under_the_destination_name(socket_path: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "CHUNK", 4)
    source = tmp_path / "big"
    source.write_bytes(b"0123456789")
    source.chmod(0o640)
    guest = FakeGuest({})
    with FakePeer(socket_path, guest):
        cp.copy("tiny", source, GuestPath("tiny", "/tmp/renamed"), socket_path, agent_timeout=5, say=print)
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
        cp.copy("tiny", GuestPath("tiny", "/etc/motd"), target, socket_path, agent_timeout=5, say=print)
    assert list(target.iterdir()) == []


def test_a_download_replaces_a_link_at_the_destination_instead_of_writing_through_it(
        socket_path: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep")
    (tmp_path / "motd").symlink_to(elsewhere)
    with FakePeer(socket_path, FakeGuest({"/etc/motd": b"hello"})):
        cp.copy("tiny", GuestPath("tiny", "/etc/motd"), tmp_path / "motd", socket_path, agent_timeout=5, say=print)
    assert (tmp_path / "motd").read_bytes() == b"hello" and not (tmp_path / "motd").is_symlink()
    assert elsewhere.read_text() == "keep"
    assert (tmp_path / "motd").stat().st_mode & 0o777 == 0o644


def test_an_upload_into_a_directory_lands_as_dir_slash_name(socket_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"hello")
    guest = FakeGuest({}, directories=("/", "/srv", "/srv/app"))
    with FakePeer(socket_path, guest):
        cp.copy("tiny", source, GuestPath("tiny", "/srv/app"), socket_path, agent_timeout=5, say=print)
    assert guest.files == {"/srv/app/f": b"hello"}


def test_an_upload_onto_a_directory_of_the_same_name_is_refused_and_leaves_nothing(
        socket_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"hello")
    guest = FakeGuest({}, directories=("/", "/srv", "/srv/app", "/srv/app/f"))
    with FakePeer(socket_path, guest), pytest.raises(UsageError) as refused:
        cp.copy("tiny", source, GuestPath("tiny", "/srv/app"), socket_path, agent_timeout=5, say=print)
    assert (str(refused.value), refused.value.exit_code) == (
        "tiny:/srv/app/f is a directory: cp puts no file in its place", 2)
    assert guest.files == {} and guest.directories == {"/", "/srv", "/srv/app", "/srv/app/f"}


@pytest.mark.parametrize("made", [False, True])
def test_a_download_to_a_name_with_a_trailing_slash_needs_that_directory(
        socket_path: Path, tmp_path: Path, made: bool) -> None:
    if made:
        (tmp_path / "newdir").mkdir()
    destination = f"{tmp_path}/newdir/"
    vm, source, target = endpoints("tiny:/etc/motd", destination)
    with FakePeer(socket_path, FakeGuest({"/etc/motd": b"hello"})), contextlib.ExitStack() as refusal:
        refused = None if made else refusal.enter_context(pytest.raises(UsageError))
        cp.copy(vm, source, target, socket_path, into_directory=cp.names_a_directory(destination), agent_timeout=5,
                say=print)
    if refused is None:
        assert (tmp_path / "newdir/motd").read_bytes() == b"hello"
    else:
        assert (str(refused.value), refused.value.exit_code) == (f"{tmp_path}/newdir/ is not a directory", 2)
        assert refused.value.hint == f"mkdir {tmp_path}/newdir first"
        assert not (tmp_path / "newdir").exists()


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
        cp.copy("tiny", GuestPath("tiny", "/etc/motd"), special, socket_path, agent_timeout=5, say=print)
    assert (str(refused.value), refused.value.exit_code) == (f"{special} is not a regular file", 2)
    assert stat.S_ISFIFO(special.lstat().st_mode)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pipe", "qga.sock"]


def test_an_upload_from_a_fifo_is_refused_without_waiting_for_a_writer(socket_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "pipe"
    os.mkfifo(source)
    guest = FakeGuest({})
    with FakePeer(socket_path, guest), unless_it_hangs(), pytest.raises(UsageError) as refused:
        cp.copy("tiny", source, GuestPath("tiny", "/tmp/x"), socket_path, agent_timeout=5, say=print)
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
        cp.copy("tiny", GuestPath("tiny", "/etc/motd"), tmp_path / "motd", socket_path, agent_timeout=5,
                  say=print)
    assert (str(failed.value), failed.value.exit_code) == (f"tiny: {message}", 5)
    assert list(tmp_path.iterdir()) == [socket_path]


def host_tree(top: Path) -> dict[str, object]:
    """Each path below top: a file's bytes and mode, a directory's mode, a link's target."""
    found: dict[str, object] = {}
    for path in sorted(top.rglob("*")):
        mode = path.lstat().st_mode
        name = str(path.relative_to(top))
        if stat.S_ISLNK(mode):
            found[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(mode):
            found[name] = ("dir", stat.S_IMODE(mode))
        else:
            found[name] = (path.read_bytes(), stat.S_IMODE(mode))
    return found


def make_host_tree(top: Path) -> None:
    (top / "etc" / "deep").mkdir(parents=True)
    (top / "etc" / "app.conf").write_bytes(b"port = 80\n")
    (top / "etc" / "deep" / "a name\nwith a newline").write_bytes(b"odd")
    (top / "run.sh").write_bytes(b"#!/bin/sh\n")
    (top / "run.sh").chmod(0o750)
    (top / "etc" / "deep").chmod(0o700)
    (top / "config").symlink_to("etc/app.conf")
    (top / "passwd").symlink_to("/etc/passwd")
    os.mkfifo(top / "pipe")


def test_an_upload_of_a_tree_makes_it_at_dst_slash_name_with_its_modes_and_links(
        socket_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "CHUNK", 4)
    make_host_tree(tmp_path / "app")
    guest = FakeGuest({})
    said: list[str] = []
    with FakePeer(socket_path, guest), unless_it_hangs():
        cp.copy("tiny", tmp_path / "app", GuestPath("tiny", "/tmp"), socket_path, recursive=True, agent_timeout=5,
                  say=said.append)
    assert guest.files == {"/tmp/app/etc/app.conf": b"port = 80\n", "/tmp/app/etc/deep/a name\nwith a newline": b"odd",
                           "/tmp/app/run.sh": b"#!/bin/sh\n"}
    assert guest.directories == {"/", "/tmp", "/tmp/app", "/tmp/app/etc", "/tmp/app/etc/deep"}
    assert guest.links == {"/tmp/app/config": "etc/app.conf", "/tmp/app/passwd": "/etc/passwd"}
    assert {path: oct(guest.modes[path]) for path in guest.files} == {
        "/tmp/app/etc/app.conf": "0o644", "/tmp/app/etc/deep/a name\nwith a newline": "0o644",
        "/tmp/app/run.sh": "0o750"}
    assert (oct(guest.modes["/tmp/app/etc/deep"]), oct(guest.modes["/tmp/app"])) == ("0o700", "0o755")
    assert said[0] == f"skipped {tmp_path / 'app' / 'pipe'}: not a regular file, directory or link"
    assert said[1].startswith("copied 3 files, 23 bytes to tiny:/tmp/app in ")


def test_an_upload_of_a_tree_to_a_new_name_makes_that_name_and_never_merges(socket_path: Path, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "a").write_bytes(b"a")
    guest = FakeGuest({"/tmp/old/app/keep": b"keep"}, directories=("/", "/tmp", "/tmp/old", "/tmp/old/app"))
    with FakePeer(socket_path, guest):
        cp.copy("tiny", tmp_path / "app", GuestPath("tiny", "/tmp/new/"), socket_path, recursive=True,
                  agent_timeout=5, say=print)
        with pytest.raises(UsageError) as refused:
            cp.copy("tiny", tmp_path / "app", GuestPath("tiny", "/tmp/old"), socket_path, recursive=True,
                      agent_timeout=5, say=print)
    assert (str(refused.value), refused.value.exit_code) == ("tiny:/tmp/old/app exists", 2)
    assert guest.files == {"/tmp/new/a": b"a", "/tmp/old/app/keep": b"keep"}
    assert guest.directories == {"/", "/tmp", "/tmp/new", "/tmp/old", "/tmp/old/app"}


def test_a_failed_upload_of_a_tree_leaves_nothing_in_the_guest(socket_path: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "CHUNK", 4)
    make_host_tree(tmp_path / "app")
    guest = FakeGuest({}, fail_after=2)
    with FakePeer(socket_path, guest), pytest.raises(AgentError) as failed:
        cp.copy("tiny", tmp_path / "app", GuestPath("tiny", "/tmp"), socket_path, recursive=True, agent_timeout=5,
                  say=print)
    assert (str(failed.value), failed.value.exit_code) == (
        "tiny: the guest agent failed to execute guest-file-write: No space left on device", 5)
    assert (guest.files, guest.links, guest.directories) == ({}, {}, {"/", "/tmp"})


@pytest.mark.parametrize("source", ["host", "guest"])
def test_a_directory_without_r_is_refused_with_a_hint(socket_path: Path, tmp_path: Path, source: str) -> None:
    (tmp_path / "app").mkdir()
    guest = FakeGuest({"/tmp": b""})  # guest-file-open of a directory succeeds, as fopen's does
    ends = ((tmp_path / "app", GuestPath("tiny", "/tmp/x")) if source == "host" else
            (GuestPath("tiny", "/tmp"), tmp_path / "x"))
    with FakePeer(socket_path, guest), pytest.raises(UsageError) as refused:
        cp.copy("tiny", *ends, socket_path, agent_timeout=5, say=print)
    assert (str(refused.value), refused.value.exit_code, refused.value.hint) == (
        f"{ends[0]} is a directory", 2, "vmrun cp -r copies a directory")


def guest_tree() -> FakeGuest:
    guest = FakeGuest({"/srv/app/etc/app.conf": b"port = 80\n", "/srv/app/etc/a name\nwith a newline": b"odd",
                       "/srv/app/run.sh": b"#!/bin/sh\n"},
                      directories=("/", "/srv", "/srv/app", "/srv/app/etc", "/srv/app/etc/deep"),
                      links={"/srv/app/config": "etc/app.conf", "/srv/app/etc/up": "../run.sh",
                             "/srv/app/passwd": "/etc/passwd", "/srv/app/etc/out": "../../x",
                             "/srv/app/etc/deep/through": "../up/../../x"},
                      fifos=("/srv/app/pipe",))
    guest.modes |= {"/srv/app/run.sh": 0o750, "/srv/app/etc/deep": 0o500}
    return guest


def test_a_download_of_a_tree_keeps_names_modes_and_the_links_that_stay_inside(
        socket_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "CHUNK", 4)
    said: list[str] = []
    with FakePeer(socket_path, guest_tree()), unless_it_hangs():
        cp.copy("tiny", GuestPath("tiny", "/srv/app"), tmp_path / "copy", socket_path, recursive=True,
                  agent_timeout=5, say=said.append)
    assert host_tree(tmp_path / "copy") == {
        "config": ("link", "etc/app.conf"),
        "etc": ("dir", 0o755),
        "etc/a name\nwith a newline": (b"odd", 0o644),
        "etc/app.conf": (b"port = 80\n", 0o644),
        "etc/deep": ("dir", 0o500),
        "etc/up": ("link", "../run.sh"),
        "run.sh": (b"#!/bin/sh\n", 0o750),
    }
    assert said[:-1] == [
        "skipped tiny:/srv/app/etc/deep/through: a link out of the copied tree (to '../up/../../x')",
        "skipped tiny:/srv/app/etc/out: a link out of the copied tree (to '../../x')",
        "skipped tiny:/srv/app/passwd: a link out of the copied tree (to '/etc/passwd')",
        "skipped tiny:/srv/app/pipe: not a regular file, directory or link",
    ]
    assert said[-1].startswith(f"copied 3 files, 23 bytes to {tmp_path / 'copy'} in ")


def test_a_download_of_a_tree_into_a_directory_takes_the_sources_name_and_never_merges(
        socket_path: Path, tmp_path: Path) -> None:
    (tmp_path / "into" / "app").mkdir(parents=True)
    (tmp_path / "into" / "app" / "keep").write_text("keep")
    guest = FakeGuest({"/srv/app/a": b"a"}, directories=("/", "/srv", "/srv/app"))
    with FakePeer(socket_path, guest), pytest.raises(UsageError) as refused:
        cp.copy("tiny", GuestPath("tiny", "/srv/app/"), tmp_path / "into", socket_path, recursive=True,
                  agent_timeout=5, say=print)
    assert (str(refused.value), refused.value.exit_code) == (f"{tmp_path / 'into' / 'app'} exists", 2)
    (tmp_path / "into" / "app" / "keep").unlink()
    (tmp_path / "into" / "app").rmdir()
    with FakePeer(socket_path.with_name("again.sock"), guest):
        cp.copy("tiny", GuestPath("tiny", "/srv/app/"), tmp_path / "into", socket_path.with_name("again.sock"),
                  recursive=True, agent_timeout=5, say=print)
    assert host_tree(tmp_path / "into") == {"app": ("dir", 0o755), "app/a": (b"a", 0o644)}


def test_a_failed_download_of_a_tree_leaves_nothing_on_the_host(socket_path: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy, "CHUNK", 4)
    guest = guest_tree()
    guest.fail_after = 3
    with FakePeer(socket_path, guest), pytest.raises(AgentError, match="No space left on device"):
        cp.copy("tiny", GuestPath("tiny", "/srv/app"), tmp_path / "copy", socket_path, recursive=True,
                  agent_timeout=5, say=print)
    assert list(tmp_path.iterdir()) == [socket_path]


def record(mode: int, name: bytes) -> bytes:
    return f"{mode:x}\n".encode() + name + b"\0"


TOP = record(0o040755, b".")


@pytest.mark.parametrize(("listing", "message"), [
    (TOP + record(0o100644, b"./../escape"),
     r"the guest listed b'81a4\n./../escape' in /srv/app: not a mode and a path below it"),
    (TOP + record(0o100644, b"/etc/cron.d/x"),
     r"the guest listed b'81a4\n/etc/cron.d/x' in /srv/app: not a mode and a path below it"),
    (TOP + record(0o100644, b"./a//b"),
     r"the guest listed b'81a4\n./a//b' in /srv/app: not a mode and a path below it"),
    (TOP + b"+81a4\n./a\0", r"the guest listed b'+81a4\n./a' in /srv/app: not a mode and a path below it"),
    (TOP + record(0o100644, b"./a")[:-1], "the guest's listing of /srv/app does not end with a NUL: "),
    (record(0o100644, b"./a"), "the guest's listing of /srv/app does not begin with the directory itself"),
    # A link the guest lists, then lists a file below: it is never followed, even to a place inside the tree.
    (TOP + record(0o120777, b"./here") + record(0o100644, b"./here/x"),
     "the guest listed /srv/app/here/x outside a directory it listed before"),
    (TOP + record(0o100644, b"./nodir/x"), "the guest listed /srv/app/nodir/x outside a directory it listed before"),
    (TOP + record(0o040755, b"./d") + record(0o100644, b"./d"), "the guest listed /srv/app/d twice"),
], ids=["dot-dot", "absolute", "empty-component", "not-hex", "no-nul", "no-top", "below-a-link", "below-nothing",
        "twice"])
def test_a_lying_guest_listing_fails_the_copy_and_writes_nothing_outside_it(
        socket_path: Path, tmp_path: Path, listing: bytes, message: str) -> None:
    guest = FakeGuest({"/srv/app/here/x": b"x", "/srv/app/nodir/x": b"x", "/srv/app/d": b"d"},
                      directories=("/", "/srv", "/srv/app"), links={"/srv/app/here": "."}, listing=listing)
    with FakePeer(socket_path, guest), pytest.raises(AgentError) as failed:
        cp.copy("tiny", GuestPath("tiny", "/srv/app"), tmp_path / "copy", socket_path, recursive=True,
                  agent_timeout=5, say=print)
    assert str(failed.value).startswith(f"tiny: {message}") and failed.value.exit_code == 5
    assert list(tmp_path.iterdir()) == [socket_path]


def test_a_guest_name_that_is_not_utf8_is_skipped_with_a_note() -> None:
    said: list[str] = []
    entries = copytree.parse_listing(TOP + record(0o100644, b"./caf\xe9") + record(0o100644, b"./ok"),
                                     GuestPath("tiny", "/srv"), say=said.append)
    assert [entry.parts for entry in entries] == [(), ("ok",)]
    assert said == [r"skipped tiny:/srv/b'caf\xe9': the guest agent cannot name a file whose name is not UTF-8"]


@pytest.mark.parametrize(("target", "depth", "inside"), [
    ("a/b", 0, True), (".", 0, True), ("../a", 1, True), ("../../a", 2, True), ("./../a/./b", 1, True),
    ("../a", 0, False), ("/etc", 3, False), ("a/../b", 3, False), ("../../a", 1, False), ("..", 0, False),
])
def test_a_guest_link_is_kept_only_if_it_points_inside_the_tree(target: str, depth: int, inside: bool) -> None:
    assert copytree.link_stays_inside(target, depth) is inside
