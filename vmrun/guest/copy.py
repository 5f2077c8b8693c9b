"""One file between the host and a running guest, over the guest agent's file calls: the primitives `vmrun cp`
(vmrun/guest/cp.py) and its trees (vmrun/guest/copytree.py) are made of.

Each side writes a temporary file beside the destination and renames it into place, so a copy that
fails leaves the old file or none, never half of one; a symbolic link at the destination is replaced,
never written through. The file's permission bits go with it (`stat` and `chmod` in the guest, over
guest-exec); its owner does not: the copy belongs to whoever writes it (root, as vmrun and qemu-ga run).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import attrs

from vmrun.errors import AgentError, UsageError
from vmrun.files import open_to_read
from vmrun.guest.agent import ExecResult, GuestAgent
from vmrun.guest.hooks import describe_failure
from vmrun.record import Record

# One guest-file-read or -write each. Under TCG the tiny guest read ~14 MiB/s and wrote ~4 MiB/s at 1 MiB, the
# fastest of 64 KiB to 4 MiB (writes 3.4-4.0 MiB/s across them: qemu-ga parsing the JSON sets their pace, not
# the round trips). qemu-ga takes requests of up to 64 MiB of JSON and qemu.qmp reads replies of up to 10 MB.
CHUNK = 1 << 20
CHUNK_TIMEOUT = 60.0  # one chunk, even on a loaded TCG host
GUEST_COMMAND_TIMEOUT = 30.0
PERMISSION_BITS = 0o777  # set-id and sticky bits stay behind, as with cp without -p
DIRECTORY_HINT = "vmrun cp -r copies a directory"
CALLS = ("guest-file-open", "guest-file-close", "guest-exec", "guest-exec-status")


@attrs.frozen(repr=False)
class GuestPath(Record):
    vm: str
    path: str  # absolute, in the guest

    def __str__(self) -> str:
        return f"{self.vm}:{self.path}"


@attrs.frozen(repr=False)
class Copied(Record):
    size: int
    target: GuestPath | Path
    files: int | None = None  # how many, for a tree

    def __str__(self) -> str:
        files = "" if self.files is None else f"{self.files} file{'' if self.files == 1 else 's'}, "
        what = f"{files}{self.size} bytes"
        return f"copied {what} to {self.target}"


def upload(agent: GuestAgent, source: Path, destination: GuestPath) -> Copied:
    try:
        local = open_to_read(source)  # a link is followed, as cp follows one
    except IsADirectoryError:  # from fdopen
        raise UsageError(f"{source} is a directory", hint=DIRECTORY_HINT) from None
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from exc
    with local:
        mode = _regular_file_mode(os.fstat(local.fileno()).st_mode, str(source))
        target = destination.path
        if target.endswith("/") or _is_guest_directory(agent, target):
            target = posixpath.join(target, source.name)
            if _is_guest_directory(agent, target):  # mv would put the file inside it, under its temporary name
                raise UsageError(f"{destination.vm}:{target} is a directory: cp puts no file in its place")
        temporary = beside(target)
        try:
            size = send(agent, local, source, temporary)
            # qemu-ga creates files 0666 whatever the umask.
            guest_run(agent, ["chmod", f"{mode:o}", temporary])
            # -T: a directory made there meanwhile fails the rename instead of receiving the temporary file.
            guest_run(agent, ["mv", "-f", "-T", temporary, target])
        except BaseException:
            remove_in_guest(agent, temporary)
            raise
    return Copied(size, GuestPath(destination.vm, target))


def _is_guest_directory(agent: GuestAgent, path: str) -> bool:
    return guest_run(agent, ["test", "-d", path], check=False).ok


def send(agent: GuestAgent, local: BinaryIO, source: Path, guest_path: str) -> int:
    """The local file's bytes written to a new guest file (mode 0666); how many."""
    handle = agent.open_file(guest_path, "wb")
    size = 0
    try:
        while chunk := _read(local, source):
            agent.write_file(handle, chunk, timeout=CHUNK_TIMEOUT)
            size += len(chunk)
    finally:
        agent.close_file(handle)
    return size


def receive(agent: GuestAgent, guest_path: str, local: BinaryIO) -> int:
    """The guest file's bytes written to local; how many."""
    handle = agent.open_file(guest_path, "rb")
    try:
        return receive_from(agent, handle, guest_path, local)
    finally:
        agent.close_file(handle)


def receive_from(agent: GuestAgent, handle: int, guest_path: str, local: BinaryIO) -> int:
    size = 0
    while True:
        chunk, end = agent.read_file(handle, CHUNK, timeout=CHUNK_TIMEOUT)
        if not chunk and not end:  # a regular file's read gives bytes or its end: it would loop for good
            raise AgentError(f"the guest agent read nothing and no end of {guest_path}")
        local.write(chunk)
        size += len(chunk)
        if end:
            return size


def remove_in_guest(agent: GuestAgent, path: str) -> None:
    """What a failed copy left in the guest, removed if the agent still answers: what failed may be the agent."""
    with contextlib.suppress(AgentError):
        guest_run(agent, ["rm", "-rf", path], check=False)


def download(agent: GuestAgent, source: GuestPath, destination: Path, *, into_directory: bool = False) -> Copied:
    """into_directory: the destination was named with a trailing slash, so it must be a directory, as with cp."""
    handle = agent.open_file(source.path, "rb")  # first, so a missing file is told in the agent's words
    try:
        mode = _regular_file_mode(_guest_mode(agent, source.path), str(source))
        if destination.is_dir():
            target = destination / posixpath.basename(source.path)
        elif into_directory:
            raise UsageError(f"{destination}/ is not a directory",
                             hint=None if destination.exists() else f"mkdir {destination} first")
        else:
            target = destination
        _replaceable(target)
        try:
            descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".vmrun")
        except OSError as exc:
            raise UsageError(f"cannot write {target}: {exc.strerror}") from exc
        try:
            with os.fdopen(descriptor, "wb") as local:
                size = receive_from(agent, handle, source.path, local)
                os.fchmod(local.fileno(), mode)
            os.replace(temporary, target)
        except OSError as exc:
            os.unlink(temporary)
            raise UsageError(f"cannot write {target}: {exc.strerror}") from exc
        except BaseException:
            os.unlink(temporary)
            raise
    finally:
        agent.close_file(handle)
    return Copied(size, target)


def _regular_file_mode(st_mode: int, name: str) -> int:
    if stat.S_ISDIR(st_mode):
        raise UsageError(f"{name} is a directory", hint=DIRECTORY_HINT)
    if not stat.S_ISREG(st_mode):
        raise UsageError(f"{name} is not a regular file", hint="vmrun cp copies one file")
    return stat.S_IMODE(st_mode) & PERMISSION_BITS


def _replaceable(target: Path) -> None:
    """The rename replaces a file or a link; a FIFO or device there (/dev/null) would become a file."""
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from exc
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise UsageError(f"{target} is not a regular file", hint="vmrun cp writes a file, or replaces a link")


def _guest_mode(agent: GuestAgent, path: str) -> int:
    said = guest_run(agent, ["stat", "-L", "-c", "%f", path]).stdout.decode(errors="replace").strip()
    try:
        return int(said, 16)
    except ValueError:
        raise AgentError(f"`stat -L -c %f {path}` in the guest printed {said!r}, not a mode in hex") from None


def _read(local: BinaryIO, source: Path) -> bytes:
    try:
        return local.read(CHUNK)
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from exc


def beside(path: str) -> str:
    """A fresh dot name in path's directory: renamed over path, it stays on path's file system."""
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}.{secrets.token_hex(4)}.vmrun")


def guest_run(agent: GuestAgent, argv: Sequence[str], *, check: bool = True,
              timeout: float = GUEST_COMMAND_TIMEOUT) -> ExecResult:
    result = agent.exec(argv, timeout=timeout)
    if check and not result.ok:
        raise AgentError(f"`{' '.join(argv)}` failed in the guest: {describe_failure(result)}")
    return result
