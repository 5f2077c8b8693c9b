"""`vmrun cp -r`: a directory tree between the host and a running guest, over the guest agent.

The tree is built under a temporary dot directory beside the destination and renamed into place at the end, so a
copy that fails leaves no tree, never half of one; the destination must not exist yet (no merging into an old
tree). Directories and files keep their permission bits; links inside the tree are copied as links, never
followed; FIFOs, sockets and devices inside are skipped with a note, never opened.

The guest is not trusted on the way out: vmrun runs as root, and what a guest lists must not make it write
outside the destination. Its listing is checked (each name below the copied directory, no `..`), every host
directory is reached from its parent without following a link (O_NOFOLLOW, one descriptor per level), and a
guest link is copied only if it points inside the copied tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import attrs

from vmrun.errors import AgentError, UsageError
from vmrun.files import open_to_read
from vmrun.guest.agent import GuestAgent
from vmrun.guest.copy import (
    PERMISSION_BITS,
    Copied,
    GuestPath,
    beside,
    guest_run,
    receive,
    remove_in_guest,
    send,
)
from vmrun.progress import Say
from vmrun.record import Record

# Each entry as its raw mode in hex, a newline, its path and a NUL: a name (which may hold newlines, never a NUL)
# cannot forge a record. One stat per entry costs a fork in the guest, far less than a guest-exec per file would.
LIST_SCRIPT = r'cd "$1" && exec find . -exec stat -c %f {} \; -print0'
LIST_TIMEOUT = 300.0
ARGUMENT_BYTES = 64 * 1024  # of paths in one guest command, far below any guest's ARG_MAX
HEX_MODE = re.compile(rb"[0-9a-f]{1,8}")
NO_FOLLOW_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
EXISTS_HINT = "vmrun cp -r makes a new directory: remove it, or name another destination"


@attrs.frozen(repr=False)
class GuestEntry(Record):
    parts: tuple[str, ...]  # the path below the copied directory; () is that directory
    mode: int


def upload_tree(agent: GuestAgent, source: Path, destination: GuestPath, *, say: Say) -> Copied:
    try:
        root = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # a link given as SRC is followed
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from exc
    try:
        target = destination.path.rstrip("/") or "/"
        if guest_run(agent, ["test", "-d", target], check=False).ok:
            target = posixpath.join(target, _tree_name(os.path.abspath(source), str(source)))
        if guest_run(agent, ["sh", "-c", 'test -e "$1" || test -L "$1"', "sh", target], check=False).ok:
            raise UsageError(f"{destination.vm}:{target} exists", hint=EXISTS_HINT)
        temporary = beside(target)
        guest_run(agent, ["mkdir", temporary])
        try:
            files, size = _send_tree(agent, root, source, temporary, say=say)
            guest_run(agent, ["mv", "-T", temporary, target])  # -T: never into a directory made there meanwhile
        except BaseException:
            remove_in_guest(agent, temporary)
            raise
    finally:
        os.close(root)
    return Copied(size, GuestPath(destination.vm, target), files)


def download_tree(agent: GuestAgent, source: GuestPath, destination: Path, *, say: Say) -> Copied:
    target = destination / _tree_name(source.path, str(source)) if destination.is_dir() else destination
    if os.path.lexists(target):
        raise UsageError(f"{target} exists", hint=EXISTS_HINT)
    listing = guest_run(agent, ["sh", "-c", LIST_SCRIPT, "sh", source.path], timeout=LIST_TIMEOUT)
    if listing.stdout_truncated:
        raise AgentError(f"the guest agent cut the listing of {source.path} short: copy its subdirectories one by one")
    entries = parse_listing(listing.stdout, source, say=say)
    try:
        temporary = tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".vmrun")
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from exc
    try:
        root = os.open(temporary, NO_FOLLOW_DIRECTORY)
        try:
            files, size = _receive_tree(agent, entries, source, root, say=say)
        finally:
            os.close(root)
        os.rename(temporary, target)
    except BaseException as exc:
        shutil.rmtree(temporary, ignore_errors=True)  # never follows a link (it works at directory descriptors)
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write {target}: {exc.strerror}") from exc
        raise
    return Copied(size, target, files)


def parse_listing(output: bytes, source: GuestPath, *, say: Say) -> list[GuestEntry]:
    """The entries LIST_SCRIPT printed, the copied directory first; a record no find prints fails the copy."""
    if not output.endswith(b"\0"):
        raise AgentError(f"the guest's listing of {source.path} does not end with a NUL: {output[-80:]!r}")
    entries = []
    for record in output[:-1].split(b"\0"):
        mode, newline, name = record.partition(b"\n")
        parts = name.split(b"/")
        if not newline or not HEX_MODE.fullmatch(mode) or parts[0] != b"." or any(
                part in (b"", b".", b"..") for part in parts[1:]):
            raise AgentError(f"the guest listed {record[:200]!r} in {source.path}: not a mode and a path below it")
        try:
            entries.append(GuestEntry(tuple(part.decode() for part in parts[1:]), int(mode, 16)))
        except UnicodeDecodeError:
            say(f"skipped {source}/{name[2:]!r}: the guest agent cannot name a file whose name is not UTF-8")
    if not entries or entries[0].parts != () or not stat.S_ISDIR(entries[0].mode):
        raise AgentError(f"the guest's listing of {source.path} does not begin with the directory itself")
    return entries


def link_stays_inside(target: str, depth: int) -> bool:
    """Whether a relative link `depth` directories below the tree's top points inside the tree. Its own directories
    are real ones, so leading `..` climb exactly; after them, a `..` could climb out of wherever a link led."""
    if target.startswith("/"):
        return False
    parts = [part for part in target.split("/") if part not in ("", ".")]
    ups = next((index for index, part in enumerate(parts) if part != ".."), len(parts))
    return ups <= depth and ".." not in parts[ups:]


def _send_tree(agent: GuestAgent, root: int, source: Path, temporary: str, *, say: Say) -> tuple[int, int]:
    """The host tree at the root descriptor made at temporary in the guest; the files and bytes sent."""
    modes: dict[int, list[str]] = {stat.S_IMODE(os.fstat(root).st_mode) & PERMISSION_BITS: [temporary]}
    files = size = 0
    for parts, directory, entries in _host_directories(root, (), source):
        here = posixpath.join(temporary, *parts)
        for name, status in entries:
            shown = source.joinpath(*parts, name)
            path = posixpath.join(here, name)
            if not _utf8(name):
                say(f"skipped {shown!r}: the guest agent cannot name a file whose name is not UTF-8")
            elif stat.S_ISDIR(status.st_mode):
                modes.setdefault(stat.S_IMODE(status.st_mode) & PERMISSION_BITS, []).append(path)
            elif stat.S_ISLNK(status.st_mode):
                with _reading(shown):
                    link = os.readlink(name, dir_fd=directory)
                if _utf8(link):
                    guest_run(agent, ["ln", "-s", "--", link, path])
                else:
                    say(f"skipped {shown}: the guest agent cannot carry a link target that is not UTF-8")
            elif stat.S_ISREG(status.st_mode):
                with _reading(shown):
                    local = open_to_read(name, dir_fd=directory, follow_links=False)
                with local:
                    mode = os.fstat(local.fileno()).st_mode
                    if not stat.S_ISREG(mode):  # replaced since it was listed
                        say(f"skipped {shown}: not a regular file any more")
                        continue
                    size += send(agent, local, shown, path)
                files += 1
                modes.setdefault(stat.S_IMODE(mode) & PERMISSION_BITS, []).append(path)
            else:
                say(f"skipped {shown}: not a regular file, directory or link")
        made = [posixpath.join(here, name) for name, status in entries if stat.S_ISDIR(status.st_mode) and _utf8(name)]
        for batch in _batches(made):
            guest_run(agent, ["mkdir", *batch])
    # Last, so a read-only directory took its files first; qemu-ga made the files 0666.
    for mode, paths in modes.items():
        for batch in _batches(paths):
            guest_run(agent, ["chmod", f"{mode:o}", *batch])
    return files, size


def _host_directories(directory: int, parts: tuple[str, ...], source: Path
                      ) -> Iterator[tuple[tuple[str, ...], int, list[tuple[str, os.stat_result]]]]:
    """Each directory of the tree, parents first: its path below the top, a descriptor and its entries (lstat).
    A subdirectory is opened from its parent's descriptor without following a link, whatever the tree becomes."""
    with _reading(source.joinpath(*parts)):
        listed = [(name, os.stat(name, dir_fd=directory, follow_symlinks=False))
                  for name in sorted(os.listdir(directory))]
    yield parts, directory, listed
    for name, status in listed:
        if stat.S_ISDIR(status.st_mode) and _utf8(name):
            with _reading(source.joinpath(*parts, name)):
                below = os.open(name, NO_FOLLOW_DIRECTORY, dir_fd=directory)
            try:
                yield from _host_directories(below, (*parts, name), source)
            finally:
                os.close(below)


def _receive_tree(agent: GuestAgent, entries: Sequence[GuestEntry], source: GuestPath, root: int, *,
                  say: Say) -> tuple[int, int]:
    """The listed entries made below the root descriptor; the files and bytes received."""
    files = size = 0
    with _Directories(root) as directories:
        for entry in entries[1:]:
            guest_path = posixpath.join(source.path, *entry.parts)
            shown = f"{source.vm}:{guest_path}"
            try:
                parent = directories.open(entry.parts[:-1])
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise AgentError(f"the guest listed {guest_path} outside a directory it listed before") from exc
                raise
            name = entry.parts[-1]
            try:
                if stat.S_ISDIR(entry.mode):
                    os.mkdir(name, 0o700, dir_fd=parent)
                elif stat.S_ISREG(entry.mode):
                    descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                         0o600, dir_fd=parent)
                    with os.fdopen(descriptor, "wb") as local:
                        size += receive(agent, guest_path, local)
                        os.fchmod(local.fileno(), stat.S_IMODE(entry.mode) & PERMISSION_BITS)
                    files += 1
                elif stat.S_ISLNK(entry.mode):
                    link = guest_run(agent, ["readlink", "-n", guest_path]).stdout.decode(errors="surrogateescape")
                    if link and link_stays_inside(link, len(entry.parts) - 1):
                        os.symlink(link, name, dir_fd=parent)
                    else:
                        say(f"skipped {shown}: a link out of the copied tree (to {link!r})")
                else:
                    say(f"skipped {shown}: not a regular file, directory or link")
            except FileExistsError as exc:
                raise AgentError(f"the guest listed {guest_path} twice") from exc
        # Last, and deepest first, so a read-only directory took its entries first.
        for entry in reversed([entry for entry in entries if stat.S_ISDIR(entry.mode)]):
            os.fchmod(directories.open(entry.parts), stat.S_IMODE(entry.mode) & PERMISSION_BITS)
    return files, size


class _Directories:
    """Directories below a root descriptor, each opened from its parent's descriptor without following a link;
    the ones along the last path asked for stay open, as find lists a directory's entries right after it."""

    def __init__(self, root: int) -> None:
        self._open: list[tuple[tuple[str, ...], int]] = [((), root)]

    def open(self, parts: tuple[str, ...]) -> int:
        while parts[:len(self._open[-1][0])] != self._open[-1][0]:
            os.close(self._open.pop()[1])
        while len(here := self._open[-1][0]) < len(parts):
            below = os.open(parts[len(here)], NO_FOLLOW_DIRECTORY, dir_fd=self._open[-1][1])
            self._open.append((parts[:len(here) + 1], below))
        return self._open[-1][1]

    def __enter__(self) -> _Directories:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for _, descriptor in self._open[1:]:  # the root is the caller's
            os.close(descriptor)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def _tree_name(path: str, shown: str) -> str:
    name = posixpath.basename(path.rstrip("/"))
    if name in ("", ".", ".."):
        raise UsageError(f"{shown} has no name to give the copy", hint="name the new directory as the destination")
    return name


def _utf8(name: str) -> bool:
    """Whether the guest agent's JSON can carry a host name (os.listdir gives undecodable bytes as surrogates)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _batches(paths: Sequence[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    length = 0
    for path in paths:
        if batch and length + len(path) > ARGUMENT_BYTES:
            yield batch
            batch, length = [], 0
        batch.append(path)
        length += len(path) + 1
    if batch:
        yield batch
