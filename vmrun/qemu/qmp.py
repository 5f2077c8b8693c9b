"""Drive one qemu.qmp client from synchronous code; shared by the guest agent and the QMP monitor.

qemu.qmp is asyncio-only and vmrun is synchronous, so each session owns a private event loop
(an ``asyncio.Runner`` with its own loop factory: the thread's current loop is left alone) and
runs every await under ``asyncio.wait_for``, so no call can hang forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import ClassVar, Self, TypeVar

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, Runstate, StateError

from vmrun.errors import VmrunError

T = TypeVar("T")

REPLY_TIMEOUT = 10.0  # a live qemu or qemu-ga answers a plain command in milliseconds
DISCONNECT_TIMEOUT = 5.0


class QmpSession:
    """One QMP-framed connection to a unix socket, with errors turned into ``error``."""

    peer: ClassVar[str]  # how messages name the other end, e.g. "the guest agent"
    error: ClassVar[type[VmrunError]]

    def __init__(self, socket_path: Path, *, handshake: bool) -> None:
        self.socket_path = socket_path
        self._runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        self._client = QMPClient(socket_path.name)
        self._client.await_greeting = handshake
        self._client.negotiate = handshake

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect and close the private event loop; safe to call twice."""
        self._disconnect()
        self._runner.close()

    @property
    def _connected(self) -> bool:
        return self._client.runstate == Runstate.RUNNING

    def _run(self, awaitable: Awaitable[T], *, timeout: float) -> T:
        return self._runner.run(asyncio.wait_for(awaitable, timeout))

    def _connect(self, *, timeout: float) -> None:
        """Start a fresh session; a dropped one must be wound down first or qemu.qmp refuses."""
        self._disconnect()
        try:
            self._run(self._client.connect(str(self.socket_path)), timeout=timeout)
        except TimeoutError as exc:
            raise self._cannot_connect(f"no answer within {timeout:g} s") from exc
        except ConnectError as exc:
            raise self._cannot_connect(_reason(exc.exc)) from exc

    def _cannot_connect(self, reason: str) -> VmrunError:
        return self.error(f"cannot connect to {self.peer} at {self.socket_path}: {reason}")

    def _call(
        self,
        command: str,
        arguments: Mapping[str, object] | None = None,
        *,
        timeout: float = REPLY_TIMEOUT,
        action: str | None = None,
    ) -> object:
        """Execute ``command`` and return its "return" value; ``action`` words the failure message."""
        return self._returned(self._client.execute(command, arguments), command, timeout=timeout, action=action)

    def _send(self, command: str, arguments: Mapping[str, object] | None = None) -> asyncio.Task[object]:
        """Send ``command`` without waiting: ``_reply`` waits for its answer, in as many waits as it takes."""
        sent = self._runner.get_loop().create_task(self._client.execute(command, arguments))
        sent.add_done_callback(_forget)
        return sent

    def _reply(self, sent: asyncio.Task[object], command: str, *, timeout: float) -> object:
        """The "return" value of what ``_send`` sent; when it has not come within ``timeout``, the error
        leaves ``sent`` not done, still waiting for it."""
        return self._returned(asyncio.shield(sent), command, timeout=timeout)

    def _returned(self, reply: Awaitable[object], command: str, *, timeout: float, action: str | None = None
                  ) -> object:
        try:
            return self._run(reply, timeout=timeout)
        except ExecuteError as exc:
            raise self.error(f"{self.peer} failed to {action or f'execute {command}'}: {exc}") from exc
        except TimeoutError as exc:
            raise self.error(f"{self.peer} did not answer {command} within {timeout:g} s") from exc
        except ExecInterruptedError as exc:
            raise self.error(f"{self.peer} ({self.socket_path}) hung up before answering {command}") from exc
        except StateError as exc:
            raise self.error(f"not connected to {self.peer} ({self.socket_path}); cannot send {command}") from exc

    def _send_farewell(self, command: str, arguments: Mapping[str, object] | None = None, *, wait: float) -> None:
        """Send a command after which the peer may go silent or away; only an error reply is a failure.

        guest-shutdown never answers success and qemu may exit before answering quit, so silence
        for ``wait`` seconds and a hang-up both mean the command was taken.
        """
        try:
            self._run(self._client.execute(command, arguments), timeout=wait)
        except (TimeoutError, ExecInterruptedError):
            return
        except ExecuteError as exc:
            raise self.error(f"{self.peer} refused {command}: {exc}") from exc
        except StateError as exc:
            raise self.error(f"not connected to {self.peer} ({self.socket_path}); cannot send {command}") from exc

    async def _hung_up(self) -> None:
        """Return once the connection has dropped (qemu.qmp does not wake event listeners on EOF)."""
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()

    def _disconnect(self) -> None:
        if self._client.runstate == Runstate.IDLE:
            return
        # disconnect() re-raises whatever ended the session (EOF, a protocol error): that is history now.
        with contextlib.suppress(Exception):
            self._run(self._client.disconnect(), timeout=DISCONNECT_TIMEOUT)


def _forget(sent: asyncio.Task[object]) -> None:
    """An answer no one waits for any more (the connection closed under it, or it was given up) is no
    error to log."""
    if not sent.cancelled():
        sent.exception()


def _reason(exc: BaseException) -> str:
    """The root cause of a failed connect, in a few words."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, EOFError):
        return "the other end closed the connection"
    return str(exc) or type(exc).__name__
