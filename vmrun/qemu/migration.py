"""The QMP side of live migration: what may not move, listening for it, sending it and watching it."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

import attrs

from vmrun.errors import LaunchError, PreflightError, VmrunError
from vmrun.qemu.monitor import Monitor
from vmrun.record import Record

# query-migrate's states that end a migration; "completed" is the only good one.
FINISHED = frozenset({"completed", "failed", "cancelled"})
POLL = 0.05  # query this often: an idle small guest moves in tens of milliseconds
MIRROR_END_WAIT = 30.0  # a cancelled mirror's last writes, over the network
PORT_TRIES = 5  # a port found free can be taken before qemu binds it: try another


@attrs.frozen(repr=False)
class Mirror(Record):
    """One disk copied over NBD: its block node (the same name on both sides, the export's name too), and
    whether only an overlay's own clusters go (sync=top, the destination having the base)."""

    node: str
    top: bool = False

    @property
    def job(self) -> str:
        return f"copy-{self.node}"

    @property
    def target(self) -> str:
        return f"{self.node}-copy"


@attrs.frozen(repr=False)
class Copying(Record):
    """query-block-jobs on the mirrors: every one ready (in step with its disk) or not, and bytes so far."""

    ready: bool
    done: int
    total: int


@attrs.frozen(repr=False)
class Progress(Record):
    """query-migrate's answer, in the words vmrun reports."""

    status: str
    total_ms: int | None = None
    downtime_ms: int | None = None
    bytes: int | None = None
    error: str | None = None
    remaining: int | None = None  # RAM still to send (dirtied pages are sent again, so this can grow)

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> Progress:
        ram = info.get("ram") if isinstance(info.get("ram"), dict) else {}
        return cls(status=str(info.get("status", "none")), total_ms=info.get("total-time"),
                   downtime_ms=info.get("downtime"), bytes=ram.get("transferred") if ram else None,
                   error=info.get("error-desc"), remaining=ram.get("remaining") if ram else None)


class MigrationMonitor(Monitor):
    """The QMP commands of migration, on either side."""

    def info(self) -> dict[str, Any]:
        reply = self._call("query-migrate")
        if not isinstance(reply, dict):
            raise LaunchError(f"{self.peer} answered query-migrate with something unexpected: {reply!r:.200}")
        return reply

    def blocked_reasons(self) -> list[str]:
        """Why qemu would refuse to migrate now (a mounted 9p share, ...); empty when it would not."""
        return [str(reason) for reason in self.info().get("blocked-reasons", [])]

    def listen(self, address: str) -> int:
        """Incoming side (qemu started with -incoming defer): listen on address, on a port the kernel picks."""
        self._call("migrate-incoming", {"uri": f"tcp:{_bracketed(address)}:0"}, action="listen for the migration")
        for listening in self.info().get("socket-address", []):
            if isinstance(listening, dict) and listening.get("port"):
                return int(listening["port"])
        raise LaunchError(f"{self.peer} listens for the migration but does not say on which port")

    def send(self, address: str, port: int) -> None:
        """Outgoing side: start sending; qemu refuses here what blocks it (exit 3, in qemu's words)."""
        try:
            self._call("migrate", {"uri": f"tcp:{_bracketed(address)}:{port}"})
        except LaunchError as exc:
            raise PreflightError(f"qemu refuses to migrate: {_qemu_reason(exc)}") from exc

    def progress(self) -> Progress:
        return Progress.of(self.info())

    def cancel(self) -> None:
        self._call("migrate_cancel")

    def export(self, address: str, nodes: Sequence[str]) -> int:
        """Incoming side: serve the disks writable over NBD on address, for the source to mirror into; the
        port it listens on. qemu's nbd-server-start does not say which port the kernel gave it, so vmrun
        picks a free one."""
        for attempt in range(PORT_TRIES):
            port = _free_port(address)
            try:
                self._call("nbd-server-start", {"addr": {"type": "inet", "data": {"host": address,
                                                                                   "port": str(port)}}})
                break
            except LaunchError as exc:
                if "in use" not in str(exc) or attempt == PORT_TRIES - 1:
                    raise
        for node in nodes:
            self._call("block-export-add", {"type": "nbd", "id": f"export-{node}", "node-name": node,
                                            "name": node, "writable": True}, action=f"export disk {node}")
        return port

    def unexport(self) -> None:
        """Stop serving the disks (the exports go with the server): the guest runs on its own files now."""
        self._call("nbd-server-stop")

    def mirror(self, mirrors: Sequence[Mirror], address: str, port: int) -> None:
        """Outgoing side: open each disk's export on the destination and mirror the disk into it."""
        server = {"type": "inet", "host": address, "port": str(port)}
        for mirror in mirrors:
            self._call("blockdev-add", {"driver": "nbd", "node-name": mirror.target, "server": server,
                                        "export": mirror.node}, action=f"open the destination's disk {mirror.node}")
            self._call("blockdev-mirror", {"job-id": mirror.job, "device": mirror.node, "target": mirror.target,
                                           "sync": "top" if mirror.top else "full"},
                       action=f"mirror disk {mirror.node}")

    def copying(self, mirrors: Sequence[Mirror]) -> Copying:
        """How far the mirrors are; a mirror that failed or vanished is a LaunchError with qemu's words."""
        reply = self._call("query-block-jobs")
        jobs = {job.get("device"): job for job in reply if isinstance(job, dict)} if isinstance(reply, list) else {}
        found = [jobs.get(mirror.job) for mirror in mirrors]
        if missing := [mirror.node for mirror, job in zip(mirrors, found, strict=True) if job is None]:
            raise LaunchError(f"qemu stopped mirroring disk {', '.join(missing)} to the destination")
        listed = [job for job in found if job is not None]
        if failed := [f"{job['device']}: {job['error']}" for job in listed if job.get("error")]:
            raise LaunchError(f"qemu failed to copy disk {'; '.join(failed)}")
        return Copying(ready=all(job.get("ready") for job in listed), done=sum(int(job.get("offset", 0))
                       for job in listed), total=sum(int(job.get("len", 0)) for job in listed))

    def end_mirrors(self, mirrors: Sequence[Mirror], *, detach: bool) -> None:
        """Cancel the mirrors and wait until their jobs are gone. After the switch-over a ready mirror first
        writes what it still holds, leaving the copy the destination runs on complete; before it (detach)
        the copy is abandoned and the destination's disks are closed, so its qemu can go."""
        for mirror in mirrors:
            with suppress(VmrunError):  # a mirror that never started or already ended
                self._call("block-job-cancel", {"device": mirror.job, "force": detach})
        deadline = time.monotonic() + MIRROR_END_WAIT
        while time.monotonic() < deadline and not self._jobs().isdisjoint(mirror.job for mirror in mirrors):
            time.sleep(POLL)
        if detach:
            for mirror in mirrors:
                with suppress(VmrunError):  # a target that was never opened
                    self._call("blockdev-del", {"node-name": mirror.target})

    def _jobs(self) -> set[str]:
        reply = self._call("query-block-jobs")
        return {str(job.get("device")) for job in reply if isinstance(job, dict)} if isinstance(reply, list) else set()


def _free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            reason = "it is not an address of this host" if exc.errno == errno.EADDRNOTAVAIL else exc.strerror
            raise LaunchError(f"cannot listen on {address} for the disks: {reason}") from exc
        return int(probe.getsockname()[1])


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _qemu_reason(exc: LaunchError) -> str:
    return str(exc).split(": ", 1)[-1]
