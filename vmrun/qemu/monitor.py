"""A small synchronous QMP client for the VM lifecycle: status, powerdown, quit, jobs (snapshots).

Importing this module imports qemu.qmp (~70 ms): keep it out of ``vmrun/__init__``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from qemu.qmp import EventListener

from vmrun.errors import LaunchError
from vmrun.qemu.qmp import REPLY_TIMEOUT, QmpSession

JOB_POLL = 0.1  # a snapshot of a small guest takes tenths of a second; polling costs qemu nothing noticeable


class Monitor(QmpSession):
    """qemu's QMP monitor behind ``-qmp unix:PATH,server=on,wait=off``."""

    peer = "qemu's QMP monitor"
    error = LaunchError

    def __init__(self, socket_path: Path) -> None:
        super().__init__(socket_path, handshake=True)

    def connect(self, *, timeout: float) -> None:
        """Connect, read the greeting and negotiate capabilities."""
        self._connect(timeout=timeout)

    @classmethod
    @contextmanager
    def connected(cls, socket_path: Path, *, timeout: float) -> Iterator[Self]:
        """A monitor connected within ``timeout``, closed when the with-block ends."""
        with cls(socket_path) as monitor:
            monitor.connect(timeout=timeout)
            yield monitor

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

    def run_job(self, command: str, arguments: Mapping[str, object], *, job_id: str, what: str,
                timeout: float) -> None:
        """Start a background job (snapshot-save, -load, -delete), poll until it concludes, dismiss it;
        its error, or its lasting beyond ``timeout``, is a LaunchError that says ``what`` it was doing."""
        self._call(command, {"job-id": job_id, **arguments}, action=what)
        deadline = time.monotonic() + timeout
        while True:
            job = self._job(job_id)
            if job.get("status") == "concluded":
                self._call("job-dismiss", {"id": job_id})
                if "error" in job:
                    raise LaunchError(f"qemu failed to {what}: {job['error']}")
                return
            if time.monotonic() >= deadline:
                raise LaunchError(f"qemu did not {what} within {timeout:g} s",
                                  hint=f"the job {job_id} goes on in qemu; --timeout waits longer")
            time.sleep(JOB_POLL)

    def _job(self, job_id: str) -> dict[str, Any]:
        jobs = self._call("query-jobs")
        found = next((job for job in jobs if isinstance(job, dict) and job.get("id") == job_id), None) \
            if isinstance(jobs, list) else None
        if found is None:
            raise LaunchError(f"{self.peer} lost track of its job {job_id}: query-jobs answered {jobs!r:.200}")
        return found

    def block_nodes(self) -> list[dict[str, Any]]:
        """Every named block node, as query-named-block-nodes describes it (its image and snapshots)."""
        nodes = self._call("query-named-block-nodes", {"flat": True})
        if not isinstance(nodes, list):
            raise LaunchError(f"{self.peer} answered query-named-block-nodes with something unexpected: {nodes!r:.200}")
        return [node for node in nodes if isinstance(node, dict)]

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
