"""A small synchronous QMP client for the VM lifecycle: status, powerdown, quit.

Importing this module imports qemu.qmp (~70 ms): keep it out of ``vmrun/__init__``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from qemu.qmp import EventListener

from vmrun.errors import LaunchError
from vmrun.qemu.qmp import REPLY_TIMEOUT, QmpSession


class Monitor(QmpSession):
    """qemu's QMP monitor behind ``-qmp unix:PATH,server=on,wait=off``."""

    peer = "qemu's QMP monitor"
    error = LaunchError

    def __init__(self, socket_path: Path) -> None:
        super().__init__(socket_path, handshake=True)

    def connect(self, *, timeout: float) -> None:
        """Connect, read the greeting and negotiate capabilities."""
        self._connect(timeout=timeout)

    def status(self) -> str:
        """The run state: "running", "prelaunch", "paused", "shutdown", ..."""
        reply = self._call("query-status")
        status = reply.get("status") if isinstance(reply, dict) else None
        if not isinstance(status, str):
            raise LaunchError(f"{self.peer} answered query-status with something unexpected: {reply!r:.200}")
        return status

    def vcpu_threads(self) -> dict[int, int]:
        """Each vCPU's host thread id, by vCPU index (query-cpus-fast)."""
        reply = self._call("query-cpus-fast")
        try:
            return {int(cpu["cpu-index"]): int(cpu["thread-id"]) for cpu in reply}  # type: ignore[attr-defined]
        except (TypeError, KeyError, ValueError):
            raise LaunchError(f"{self.peer} answered query-cpus-fast with something unexpected: {reply!r:.200}") \
                from None

    def iothreads(self) -> dict[str, int]:
        """Each iothread's host thread id, by its id (query-iothreads)."""
        reply = self._call("query-iothreads")
        try:
            return {str(thread["id"]): int(thread["thread-id"]) for thread in reply}  # type: ignore[attr-defined]
        except (TypeError, KeyError, ValueError):
            raise LaunchError(f"{self.peer} answered query-iothreads with something unexpected: {reply!r:.200}") \
                from None

    def cont(self) -> None:
        """Let a VM started with -S run."""
        self._call("cont", action="start the paused guest")

    def powerdown(self, *, timeout: float) -> bool:
        """Press the ACPI power button; True once qemu reports SHUTDOWN or goes away within ``timeout``.

        False means the guest ignored it (no ACPI handler) or is still shutting down.
        """
        deadline = time.monotonic() + timeout
        # Listen before asking: the SHUTDOWN event may arrive before the reply to system_powerdown.
        with self._client.listener("SHUTDOWN") as shutdown:
            self._send_farewell("system_powerdown", wait=timeout)
            try:
                self._run(self._shutdown_or_hang_up(shutdown), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
        return True

    def quit(self) -> None:
        """Make qemu exit at once; a dropped connection is success."""
        self._send_farewell("quit", wait=REPLY_TIMEOUT)

    async def _shutdown_or_hang_up(self, shutdown: EventListener) -> None:
        waiters = {asyncio.ensure_future(shutdown.get()), asyncio.ensure_future(self._hung_up())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
