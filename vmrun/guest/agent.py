"""A typed, synchronous client for the QEMU guest agent (qemu-ga).

qemu.qmp speaks the protocol; this module adds the vocabulary vmrun needs: sync, exec, files, interfaces,
shutdown. The agent uses QMP framing without a greeting or capabilities step. It is resynchronised
with ``guest-sync`` and a random id, never ``guest-sync-delimited`` (its 0xFF byte breaks qemu.qmp's
reader). Importing this module imports qemu.qmp (~70 ms): keep it out of ``vmrun/__init__``.
"""

from __future__ import annotations

import asyncio
import base64
import random
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from vmrun.errors import AgentError
from vmrun.qemu.qmp import REPLY_TIMEOUT, QmpSession

SYNC_FIRST_RESEND = 1.0  # seconds before another guest-sync joins one that is not answered; each wait is
SYNC_RESEND_GROWTH = 1.5  # longer than the last: a handful of syncs for a minute's boot, ~25 for a day's
RETRY_PAUSE = 0.1  # after a failed connection, so a missing socket is not hammered
FIRST_POLL = 0.01  # a quick guest command (ethtool) is done in tens of milliseconds ...
FAST_POLLING = 0.3  # ... so poll at FIRST_POLL this long (doubling would overshoot by ~20 ms) ...
LONGEST_POLL = 0.2  # ... then back off: a slow one should not cost a round trip every 10 ms
SHUTDOWN_GRACE = 1.0  # guest-shutdown answers only on failure; wait this long for one


# Named tuples, not attrs classes: `status -a` imports this module, and attrs' import (~40 ms) was most of
# what it spent before asking anything.
class ExecResult(NamedTuple):
    """How a command run in the guest ended, and what it printed."""

    exitcode: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool

    @property
    def ok(self) -> bool:
        return self.exitcode == 0


class GuestInterface(NamedTuple):
    name: str
    mac: str | None  # lower case, "52:54:00:12:34:56"
    addresses: tuple[str, ...]  # "10.0.2.15/24" ("10.0.2.15" when the agent gives no prefix)


def addresses_by_interface(interfaces: Sequence[GuestInterface]) -> dict[str, list[str]]:
    """What `status` shows: each interface's addresses, loopback left out."""
    import ipaddress

    found = {}
    for interface in interfaces:
        routable = [address for address in interface.addresses
                    if not ipaddress.ip_interface(address).is_loopback]
        if routable:
            found[interface.name] = routable
    return found


class _Sync(NamedTuple):
    """A guest-sync sent and not answered yet, and when another is to join it."""

    token: int
    reply: asyncio.Task[object]
    resend_at: float


class GuestAgent(QmpSession):
    """The guest agent behind a qemu ``-chardev socket`` unix socket; call ``wait_ready`` first."""

    peer = "the guest agent"
    error = AgentError

    def __init__(self, socket_path: Path) -> None:
        super().__init__(socket_path, handshake=False)
        self._waiting: _Sync | None = None  # the newest sync on this connection, across wait_ready calls
        self._resend_after = SYNC_FIRST_RESEND

    def wait_ready(self, *, timeout: float) -> float:
        """Connect and sync, until the agent answers; return the seconds waited. Call it again (as `up` does,
        in slices) to go on waiting for the same sync.

        qemu's socket accepts as soon as qemu starts, long before qemu-ga runs in the guest, so a connection
        proves nothing until a guest-sync comes back. qemu keeps what is written to the port until qemu-ga
        reads it, and qemu-ga answers it the moment it runs: one sync on one connection is enough, and
        reconnecting would throw it away. Another joins it only after a wait that grows each time, in case
        qemu-ga read one and died before answering. A sync per try instead piled up in qemu (qemu-ga then
        answers each in turn) until the socket was full, and then closing the connection hung for good.
        """
        started = time.monotonic()
        deadline = started + timeout
        last_problem: str | None = None
        while deadline - time.monotonic() > 0:
            try:
                if self._sync(deadline):
                    return time.monotonic() - started
            except AgentError as exc:
                last_problem = str(exc)
                if not self._connected:  # refused, or dropped: afresh after a pause
                    self._disconnect()
                    time.sleep(min(RETRY_PAUSE, max(0.0, deadline - time.monotonic())))
        hint = "check that qemu-ga runs in the guest on the virtio port org.qemu.guest_agent.0"
        if last_problem:
            hint += f"; last attempt: {last_problem}"
        raise AgentError(f"the guest agent did not answer within {timeout:g} s", hint=hint)

    def require(self, *commands: str, purpose: str) -> None:
        """Fail plainly unless every command is enabled; ``purpose`` says why, e.g. "to run post_boot hooks"."""
        states = self._command_states()
        disabled = [command for command in commands if states.get(command) is False]
        unknown = [command for command in commands if command not in states]
        if not disabled and not unknown:
            return
        problems = []
        if disabled:
            problems.append(f"has {', '.join(disabled)} disabled (qemu-ga --block-rpcs / --allow-rpcs)")
        if unknown:
            problems.append(f"does not offer {', '.join(unknown)} (qemu-ga too old?)")
        them = "it" if len(disabled) + len(unknown) == 1 else "them"
        raise AgentError(
            f"the guest agent {' and '.join(problems)}; vmrun needs {them} {purpose}",
            hint="allow them in the guest's qemu-ga options or /etc/qemu/qemu-ga.conf (allow-rpcs, block-rpcs)",
        )

    def exec(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> ExecResult:
        """Run ``argv`` in the guest and wait for it to end; ``timeout`` bounds how long it may run."""
        command = shlex.join(argv)
        pid = self._start(argv, stdin, command)
        started = time.monotonic()
        deadline = started + timeout
        pause = FIRST_POLL
        while True:
            status = _object(self._call("guest-exec-status", {"pid": pid}), "guest-exec-status")
            if status.get("exited") is True:
                return _exec_result(status)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentError(
                    f"`{command}` did not finish within {timeout:g} s in the guest",
                    hint="it may still be running there; the guest agent cannot stop it",
                )
            time.sleep(min(pause, remaining))
            if time.monotonic() - started > FAST_POLLING:
                pause = min(pause * 2, LONGEST_POLL)

    def spawn(self, argv: Sequence[str], *, env: Sequence[str] | None = None) -> int:
        """Start ``argv`` in the guest and return its pid at once, its output captured nowhere: for a job that
        reports through files, which an exec that captures could hang on (a device unbound under it).
        ``env``: the whole environment, as NAME=VALUE."""
        return self._start(argv, None, shlex.join(argv), capture=False, env=env)

    def open_file(self, path: str, mode: str, *, timeout: float = REPLY_TIMEOUT) -> int:
        """A handle on the guest file ``path``, opened with fopen's ``mode`` ("rb", "wb")."""
        reply = self._call("guest-file-open", {"path": path, "mode": mode}, timeout=timeout,
                           action=f"open {path}")
        if not isinstance(reply, int):
            raise _malformed("guest-file-open", reply)
        return reply

    def read_file(self, handle: int, count: int, *, timeout: float = REPLY_TIMEOUT) -> tuple[bytes, bool]:
        """Up to ``count`` bytes from the handle, and whether its end was reached."""
        reply = _object(self._call("guest-file-read", {"handle": handle, "count": count}, timeout=timeout),
                        "guest-file-read")
        data = _decoded(reply.get("buf-b64"), "guest-file-read")
        if len(data) > count:
            raise AgentError(f"the guest agent sent {len(data)} bytes for a read of {count}")
        return data, reply.get("eof") is True

    def write_file(self, handle: int, data: bytes, *, timeout: float = REPLY_TIMEOUT) -> None:
        reply = _object(self._call("guest-file-write",
                                   {"handle": handle, "buf-b64": base64.b64encode(data).decode("ascii")},
                                   timeout=timeout), "guest-file-write")
        if reply.get("count") != len(data):  # qemu-ga writes all of it or fails, but a short write must not pass
            raise AgentError(f"the guest agent wrote {reply.get('count')!r} of {len(data)} bytes")

    def close_file(self, handle: int) -> None:
        self._call("guest-file-close", {"handle": handle})

    def interfaces(self) -> tuple[GuestInterface, ...]:
        return _interfaces(self._call("guest-network-get-interfaces"))

    def interfaces_at_once(self, *, timeout: float) -> tuple[GuestInterface, ...] | None:
        """Connect and ask for the interfaces in one round trip, for `status -a`, which asks each agent once with
        a short deadline: the sync and the question go together and qemu-ga answers them in order. A sync
        answered with another value (an earlier client's answer, whose message id collides with ours) means
        the question's answer may be stale too: then the long way, wait_ready and ask. None: the agent
        answered, but not with interfaces (guest-network-get-interfaces disabled)."""
        deadline = time.monotonic() + timeout
        self._connect(timeout=timeout)
        token = random.randint(0, 2**32 - 1)
        sync = self._send("guest-sync", {"id": token})
        question = self._send("guest-network-get-interfaces")
        if self._reply(sync, "guest-sync", timeout=max(0.0, deadline - time.monotonic())) != token:
            self.wait_ready(timeout=max(0.0, deadline - time.monotonic()))
            question = self._send("guest-network-get-interfaces")
        try:
            return _interfaces(self._reply(question, "guest-network-get-interfaces",
                                           timeout=max(0.0, deadline - time.monotonic())))
        except AgentError:
            if not question.done():  # no answer in time
                raise
            return None

    def interface_by_mac(self, mac: str) -> GuestInterface | None:
        wanted = mac.lower()
        return next((interface for interface in self.interfaces() if interface.mac == wanted), None)

    def shutdown(self, *, grace: float = SHUTDOWN_GRACE) -> None:
        """Ask the guest to power off; returns once the agent took the request (it never confirms)."""
        self._send_farewell("guest-shutdown", {"mode": "powerdown"}, wait=grace)

    def _sync(self, deadline: float) -> bool:
        """Connect if need be, send a sync unless one is waiting (or has waited long enough to be joined),
        and wait for its answer until the deadline or the next sync's time; True once the agent echoes
        its id, False when nothing came (the sync stays, waiting)."""
        if not self._connected:
            self._connect(timeout=max(0.0, deadline - time.monotonic()))
            self._waiting, self._resend_after = None, SYNC_FIRST_RESEND
        now = time.monotonic()
        if self._waiting is None or now >= self._waiting.resend_at:
            if self._waiting is not None:  # its answer, if it ever comes, is dropped as unknown
                self._waiting.reply.cancel()
                self._resend_after *= SYNC_RESEND_GROWTH
            token = random.randint(0, 2**32 - 1)
            self._waiting = _Sync(token, self._send("guest-sync", {"id": token}), now + self._resend_after)
        waiting = self._waiting
        try:
            answer = self._reply(waiting.reply, "guest-sync",
                                 timeout=max(0.0, min(deadline, waiting.resend_at) - time.monotonic()))
        except AgentError:
            if not waiting.reply.done():
                return False
            self._waiting = None
            raise
        self._waiting = None
        # Another value answers an earlier sync (a previous client's whose message id collides with ours):
        # discard it and sync again.
        return answer == waiting.token

    def _command_states(self) -> dict[str, bool]:
        info = _object(self._call("guest-info"), "guest-info")
        entries = info.get("supported_commands")
        if not isinstance(entries, list):
            raise _malformed("guest-info", info)
        return {
            entry["name"]: entry.get("enabled") is True
            for entry in entries
            if isinstance(entry, Mapping) and isinstance(entry.get("name"), str)
        }

    def _start(self, argv: Sequence[str], stdin: bytes | None, command: str, *, capture: bool = True,
               env: Sequence[str] | None = None) -> int:
        if not argv:
            raise ValueError("cannot run an empty command in the guest")
        arguments: dict[str, object] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": capture}
        if stdin is not None:
            arguments["input-data"] = base64.b64encode(stdin).decode("ascii")
        if env is not None:
            arguments["env"] = list(env)
        reply = _object(self._call("guest-exec", arguments, action=f"run `{command}`"), "guest-exec")
        pid = reply.get("pid")
        if not isinstance(pid, int):
            raise _malformed("guest-exec", reply)
        return pid


def _exec_result(status: Mapping[str, Any]) -> ExecResult:
    return ExecResult(
        exitcode=_optional_int(status.get("exitcode")),
        signal=_optional_int(status.get("signal")),
        stdout=_decoded(status.get("out-data"), "guest-exec-status"),
        stderr=_decoded(status.get("err-data"), "guest-exec-status"),
        stdout_truncated=status.get("out-truncated") is True,
        stderr_truncated=status.get("err-truncated") is True,
    )


def _interfaces(reply: object) -> tuple[GuestInterface, ...]:
    if not isinstance(reply, list):
        raise _malformed("guest-network-get-interfaces", reply)
    return tuple(_interface(entry) for entry in reply if isinstance(entry, Mapping))


def _interface(entry: Mapping[str, Any]) -> GuestInterface:
    """An interface as a guest reports it: the guest is not trusted, so a name that is not printable is shown
    quoted and what is no IP address (with a prefix it can have) is left out; status prints these, ssh dials them."""
    mac = entry.get("hardware-address")
    name = str(entry.get("name", ""))
    addresses = entry.get("ip-addresses") or []
    return GuestInterface(
        name=name if name.isprintable() else repr(name),
        mac=mac.lower() if isinstance(mac, str) else None,
        addresses=tuple(
            address for address in (
                _with_prefix(address["ip-address"], address.get("prefix"))
                for address in addresses
                if isinstance(address, Mapping) and isinstance(address.get("ip-address"), str)
            )
            if _is_ip_interface(address)
        ),
    )


def _is_ip_interface(address: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_interface(address)
    except ValueError:
        return False
    return True


def _with_prefix(address: str, prefix: object) -> str:
    return f"{address}/{prefix}" if isinstance(prefix, int) and not isinstance(prefix, bool) else address


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _decoded(value: object, command: str) -> bytes:
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error
        raise AgentError(f"the guest agent answered {command} with data that is not base64") from None


def _object(reply: object, command: str) -> Mapping[str, Any]:
    if isinstance(reply, Mapping):
        return reply
    raise _malformed(command, reply)


def _malformed(command: str, reply: object) -> AgentError:
    return AgentError(f"the guest agent answered {command} with something unexpected: {reply!r:.200}")
