"""A stdlib client for qemu's QMP and guest-agent sockets, and qemu processes that always go.

For the test guests' smoke scripts, which boot with raw qemu before vmrun's environment exists.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Reply = dict[str, Any]


class Failed(Exception):
    pass


class JsonSocket:
    """QMP framing: one JSON object per line each way; events can come between replies.

    A plain recv buffer rather than socket.makefile, whose reader is unusable after one timeout,
    and the agent wait below relies on timing out.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self.socket = socket.socket(socket.AF_UNIX)
        self.socket.settimeout(timeout)
        self.socket.connect(str(path))
        self.buffer = b""
        self.events: list[Reply] = []

    def close(self) -> None:
        self.socket.close()

    def send(self, command: str, **arguments: Any) -> None:
        message: Reply = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.socket.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> Reply:
        while b"\n" not in self.buffer:
            chunk = self.socket.recv(65536)
            if not chunk:
                raise Failed("connection closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        reply: Reply = json.loads(line)
        return reply

    def reply(self) -> Reply:
        while True:
            message = self.receive()
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise Failed(f"{message['error'].get('class')}: {message['error'].get('desc')}")
            else:
                return message

    def call(self, command: str, **arguments: Any) -> Any:
        self.send(command, **arguments)
        return self.reply()["return"]


def decoded(status: Reply, key: str) -> str:
    return base64.b64decode(status.get(key, "")).decode(errors="replace")


class Agent(JsonSocket):
    def exec(self, *argv: str, timeout: float = 30) -> tuple[int, str, str]:
        """Run argv in the guest (found through the agent's PATH); exit code, stdout, stderr."""
        pid = self.call("guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": True})["pid"]
        started = time.monotonic()
        while time.monotonic() < started + timeout:
            status = self.call("guest-exec-status", pid=pid)
            if status["exited"]:
                return status.get("exitcode", -1), decoded(status, "out-data"), decoded(status, "err-data")
            # Fast at first, since a short command is done in tens of ms; then back off.
            time.sleep(0.01 if time.monotonic() - started < 1 else 0.1)
        raise Failed(f"{argv} still running after {timeout} s")


def connect_agent(path: Path, timeout: float) -> Agent:
    """Send guest-sync on one connection, waiting longer each time, until the guest answers the latest one.

    Until qemu-ga opens its port, qemu leaves what we send in the socket, so the agent answers
    every sync at once when it starts; after the answer to the newest one, we are in step. The
    socket holds only about 70 unread messages before sendall blocks, which a guest that takes
    a minute to boot would reach at one sync a second: hence the growing wait.
    """
    deadline = time.monotonic() + timeout
    agent = Agent(path, timeout=1)
    token = 0
    while time.monotonic() < deadline:
        token += 1
        agent.socket.settimeout(min(token, 10))
        agent.send("guest-sync", id=token)
        try:
            while agent.reply().get("return") != token:
                pass  # an answer to an earlier sync
        except TimeoutError:
            continue
        agent.socket.settimeout(30)
        return agent
    agent.close()
    raise Failed(f"the agent did not answer within {timeout} s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; qemu daemonized, so init reaps it, not us.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@contextmanager
def running_qemu(argv: list[str], pidfile: Path) -> Iterator[int]:
    started = subprocess.run(argv, capture_output=True, text=True)
    if started.returncode:
        raise Failed(f"qemu did not start: {started.stderr.strip()}")
    pid = int(pidfile.read_text())
    try:
        yield pid
    finally:
        for signal_number in (signal.SIGTERM, signal.SIGKILL):
            if not alive(pid):
                break
            os.kill(pid, signal_number)
            wait_gone(pid, 5)


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, name: str, ok: bool, detail: str = "") -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}{f': {detail}' if detail else ''}", flush=True)
        if not ok:
            self.failures.append(name)


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started




def powerdown(qmp_path: Path, pid: int, check: Checks) -> None:
    """ACPI powerdown over QMP: the guest reports a shutdown of its own, and qemu exits."""
    qmp = JsonSocket(qmp_path, timeout=30)
    started = time.perf_counter()
    try:
        qmp.receive()  # the greeting
        qmp.call("qmp_capabilities")
        started = time.perf_counter()
        qmp.call("system_powerdown")
        while not (shutdown := [event for event in qmp.events if event["event"] == "SHUTDOWN"]):
            qmp.events.append(qmp.receive())
        reason = shutdown[0].get("data", {}).get("reason")
        check("QMP SHUTDOWN event after system_powerdown", reason == "guest-shutdown",
              f"reason {reason} after {time.perf_counter() - started:.2f} s")
    except (Failed, OSError) as error:
        check("QMP SHUTDOWN event after system_powerdown", False, str(error))
    finally:
        qmp.close()
    check("qemu exits after system_powerdown", wait_gone(pid, 30), f"{time.perf_counter() - started:.2f} s")
