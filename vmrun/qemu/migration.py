"""The QMP side of live migration: what may not move, listening for it, sending it and watching it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from vmrun.errors import LaunchError, PreflightError
from vmrun.qemu.monitor import Monitor
from vmrun.record import Record

# query-migrate's states that end a migration; "completed" is the only good one.
FINISHED = frozenset({"completed", "failed", "cancelled"})


@attrs.frozen(repr=False)
class Progress(Record):
    """query-migrate's answer, in the words vmrun reports."""

    status: str
    total_ms: int | None = None
    downtime_ms: int | None = None
    bytes: int | None = None
    error: str | None = None

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> Progress:
        ram = info.get("ram") if isinstance(info.get("ram"), dict) else {}
        return cls(status=str(info.get("status", "none")), total_ms=info.get("total-time"),
                   downtime_ms=info.get("downtime"), bytes=ram.get("transferred") if ram else None,
                   error=info.get("error-desc"))


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
        for socket in self.info().get("socket-address", []):
            if isinstance(socket, dict) and socket.get("port"):
                return int(socket["port"])
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


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _qemu_reason(exc: LaunchError) -> str:
    return str(exc).split(": ", 1)[-1]
