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

DETACH = b"\x1d"  # Ctrl-], as telnet and virsh console
FOLLOW_POLL = 0.2


def follow_log(path: Path, *, follow: bool, alive: Callable[[], bool]) -> None:
    with path.open("rb") as log:
        while True:
            chunk = log.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            elif not follow or not alive():
                return
            else:
                time.sleep(FOLLOW_POLL)


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
