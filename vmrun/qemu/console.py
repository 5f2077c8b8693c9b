"""The serial console: qemu logs it to a file and serves it on a unix socket."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

DETACH = b"\x1d"  # Ctrl-], as telnet and virsh console
FOLLOW_POLL = 0.2


_BLOCK = 65536


def show_log(log: BinaryIO, out: BinaryIO, *, tail: int | None = None) -> None:
    """What the log holds, or its last ``tail`` lines."""
    if tail is not None:
        log.seek(tail_offset(log, tail))
    while chunk := log.read(_BLOCK):
        out.write(chunk)
    out.flush()


def tail_offset(log: BinaryIO, lines: int) -> int:
    """Where the log's last ``lines`` lines start; a last line without its newline is a line too."""
    end = log.seek(0, os.SEEK_END)
    if lines == 0 or end == 0:
        return end
    log.seek(end - 1)
    position = end - 1 if log.read(1) == b"\n" else end
    found = 0
    while position > 0:
        start = max(0, position - _BLOCK)
        log.seek(start)
        block = log.read(position - start)
        index = len(block)
        while (index := block.rfind(b"\n", 0, index)) >= 0:
            found += 1
            if found == lines:
                return start + index + 1
        position = start
    return 0


def follow_log(path: Path, log: BinaryIO | None, out: BinaryIO, *, stop: Callable[[], bool] = lambda: False) -> None:
    """Print what is added to the console log at ``path`` (``log``: the one already shown, if any), and each
    new one from its start: a restart gives the VM a new run dir and a new log, which this goes on with, as
    tail -F does. Until stop() (or Ctrl-C)."""
    try:
        while not stop():
            chunk = log.read(_BLOCK) if log is not None else b""
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            newer = _newer_log(path, log)
            if newer is None:
                time.sleep(FOLLOW_POLL)
                continue
            if log is not None:
                log.close()
            log = newer
    finally:
        if log is not None:
            log.close()


def _newer_log(path: Path, log: BinaryIO | None) -> BinaryIO | None:
    """The log at path, opened, when it is another file than ``log`` (which the end of its run removed)."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return None
    if log is not None:
        shown = os.fstat(log.fileno())
        if (shown.st_dev, shown.st_ino) == (now.st_dev, now.st_ino) and shown.st_nlink > 0:
            return None
    try:
        return path.open("rb")
    except FileNotFoundError:  # gone again between the two calls
        return None


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(console_socket: Path) -> None:
    """Copy between this terminal and the console until Ctrl-], end of input or qemu hangs up."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as console, _raw_terminal(stdin):
        console.connect(str(console_socket))
        selector = selectors.DefaultSelector()
        selector.register(console, selectors.EVENT_READ)
        selector.register(stdin, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is console:
                    data = console.recv(65536)
                    if not data:
                        return
                    os.write(stdout, data)
                else:
                    typed = os.read(stdin, 1024)
                    if not typed or DETACH in typed:
                        console.sendall(typed.split(DETACH)[0])
                        return
                    console.sendall(typed)
