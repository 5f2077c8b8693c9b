"""A scripted QMP / guest-agent peer on a real unix socket, served from a thread.

The script is a function from one request (a dict) to the messages to send back, in order;
``HANG_UP`` among them closes the connection. Every request is recorded in ``received``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

Message = dict[str, Any]
HANG_UP = object()
Script = Callable[[Message], Iterable[object]]

QMP_GREETING: Message = {
    "QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, "capabilities": []}
}


def answer(request: Message, value: object) -> Message:
    return {"return": value, "id": request.get("id")}


def refuse(request: Message, desc: str) -> Message:
    return {"error": {"class": "GenericError", "desc": desc}, "id": request.get("id")}


class FakePeer:
    """Serves connections one after another, like qemu's chardev socket server."""

    def __init__(self, path: Path, script: Script, *, greeting: Message | None = None) -> None:
        self.script = script
        self.greeting = greeting
        self.received: list[Message] = []
        self.connections = 0
        self._connection: socket.socket | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def commands(self) -> list[str]:
        return [request["execute"] for request in self.received]

    def close(self) -> None:
        # shutdown() wakes a thread blocked in accept() or recv(); close() alone does not.
        for sock in (self._listener, self._connection):
            if sock is not None:
                with contextlib.suppress(OSError):  # the client already went away
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> FakePeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._connection = connection
            with connection:
                self._talk(connection)

    def _talk(self, connection: socket.socket) -> None:
        if self.greeting is not None:
            _send(connection, self.greeting)
        for request in _requests(connection):
            self.received.append(request)
            for message in self.script(request):
                if message is HANG_UP:
                    return
                _send(connection, message)


def _requests(connection: socket.socket) -> Iterator[Message]:
    """JSON objects as they arrive: qemu.qmp, like QEMU's own parser, sends no newline between them."""
    decoder, pending = json.JSONDecoder(), ""
    while True:
        try:
            chunk = connection.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        pending += chunk.decode()
        while pending.strip():
            try:
                request, end = decoder.raw_decode(pending.lstrip())
            except json.JSONDecodeError:
                break  # the rest of this object is still on its way
            pending = pending.lstrip()[end:]
            yield request


def _send(connection: socket.socket, message: object) -> None:
    with contextlib.suppress(OSError):  # the client hung up first; the test looks at what it saw
        connection.sendall(json.dumps(message).encode() + b"\n")
