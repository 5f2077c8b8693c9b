"""The built-in multiqueue step and post_boot hooks: reading `ethtool -l`, and against a scripted agent."""

from __future__ import annotations

import base64
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest

from vmrun.errors import AgentError, HookError
from vmrun.guest.agent import GuestAgent
from vmrun.guest.hooks import current_combined, run_guest_steps, run_multiqueue_step, run_post_boot_hooks
from vmrun.spec.load import parse_spec
from vmrun.spec.model import Spec

from .common import GOOD_SPEC
from .fakepeer import FakePeer, Message, answer

ETHTOOL_L = """\
Channel parameters for eth0:
Pre-set maximums:
RX:\t\tn/a
TX:\t\tn/a
Other:\t\tn/a
Combined:\t4
Current hardware settings:
RX:\t\tn/a
TX:\t\tn/a
Other:\t\tn/a
Combined:\t1
"""


def test_current_combined_reads_the_current_settings_not_the_maximum() -> None:
    assert current_combined(ETHTOOL_L) == 1


def test_current_combined_is_none_when_the_driver_reports_no_channels() -> None:
    assert current_combined("netlink error: Operation not supported\n") is None


# The step against a scripted guest agent.





AGENT_COMMANDS = ("guest-sync", "guest-info", "guest-exec", "guest-exec-status", "guest-network-get-interfaces")


class FakeGuest:
    """A guest whose eth0 has `combined` current queues; `ethtool -L` changes them unless stuck."""

    def __init__(self, mac: str, *, combined: int = 1, stuck: bool = False, hook_exit: int = 0,
                 blocked: frozenset[str] = frozenset()) -> None:
        self.mac, self.combined, self.stuck, self.hook_exit, self.blocked = mac, combined, stuck, hook_exit, blocked
        self.commands: list[list[str]] = []  # what guest-exec ran
        self.asked: list[str] = []  # every agent command, guest-sync included

    def __call__(self, request: Message) -> Iterable[object]:
        arguments = request.get("arguments", {})
        command = request["execute"]
        self.asked.append(command)
        if command == "guest-sync":
            return [answer(request, arguments["id"])]
        if command == "guest-info":
            return [answer(request, {"version": "7.2.22", "supported_commands": [
                {"name": name, "enabled": name not in self.blocked} for name in AGENT_COMMANDS]})]
        if command == "guest-network-get-interfaces":
            return [answer(request, [{"name": "lo", "hardware-address": "00:00:00:00:00:00"},
                                     {"name": "eth0", "hardware-address": self.mac}])]
        if command == "guest-exec":
            self.commands.append([arguments["path"], *arguments.get("arg", [])])
            return [answer(request, {"pid": len(self.commands)})]
        if command == "guest-exec-status":
            return [answer(request, self._run(self.commands[arguments["pid"] - 1]))]
        raise AssertionError(f"unexpected {command}")

    def _run(self, argv: list[str]) -> dict[str, object]:
        if argv[:2] == ["ethtool", "-L"]:
            if not self.stuck:
                self.combined = int(argv[4])
            return {"exited": True, "exitcode": 0}
        if argv[:2] == ["ethtool", "-l"]:
            output = ETHTOOL_L.replace("Combined:\t1", f"Combined:\t{self.combined}")
            return {"exited": True, "exitcode": 0, "out-data": base64.b64encode(output.encode()).decode()}
        return {"exited": True, "exitcode": self.hook_exit,
                "err-data": base64.b64encode(b"mount: no such device\n").decode()}


def spec_with(**changes: object) -> Spec:
    data = tomllib.loads(GOOD_SPEC)
    data.update(changes)
    return parse_spec(data, source="t", base=Path("/"))


def run_step(tmp_path: Path, guest: FakeGuest, spec: Spec, step: object = run_multiqueue_step) -> list[str]:
    said: list[str] = []
    with FakePeer(tmp_path / "qga.sock", guest), GuestAgent(tmp_path / "qga.sock") as agent:
        agent.wait_ready(timeout=2)
        step(agent, spec, said.append)  # type: ignore[operator]
    return said


def test_step_sets_the_pairs_on_the_interface_with_the_nics_mac_and_reads_them_back(tmp_path: Path) -> None:
    spec = spec_with()
    guest = FakeGuest(spec.nics[0].guest_mac.upper(), combined=1)
    said = run_step(tmp_path, guest, spec)
    assert guest.commands == [
        ["ethtool", "-l", "eth0"], ["ethtool", "-L", "eth0", "combined", "4"], ["ethtool", "-l", "eth0"],
    ]
    assert guest.combined == 4 and said[0].startswith("ethtool net0 eth0 combined 4 ✓ (set,")


def test_step_only_reads_when_the_guest_already_has_the_pairs(tmp_path: Path) -> None:
    spec = spec_with()
    guest = FakeGuest(spec.nics[0].guest_mac, combined=4)
    said = run_step(tmp_path, guest, spec)
    assert guest.commands == [["ethtool", "-l", "eth0"]]
    assert said[0].startswith("ethtool net0 eth0 combined 4 ✓ (already,")


def test_step_fails_naming_the_nic_when_the_guest_keeps_other_pairs(tmp_path: Path) -> None:
    spec = spec_with()
    guest = FakeGuest(spec.nics[0].guest_mac, combined=2, stuck=True)
    with pytest.raises(HookError, match="nics net0: guest eth0 has 2 combined queues, not 4"):
        run_step(tmp_path, guest, spec)


def test_step_fails_when_no_interface_has_the_mac(tmp_path: Path) -> None:
    spec = spec_with()
    with pytest.raises(HookError, match=f"nics net0: no guest interface has MAC {spec.nics[0].guest_mac}"):
        run_step(tmp_path, FakeGuest("52:54:00:00:00:99"), spec)


def test_a_single_queue_nic_asks_the_guest_nothing(tmp_path: Path) -> None:
    # Without mq=on the device offers the guest no other count: there is nothing to find, read or set.
    spec = spec_with(nics=[{"id": "net0", "queues": 1}])
    guest = FakeGuest(spec.nics[0].guest_mac)
    assert run_step(tmp_path, guest, spec) == ["ethtool net0 combined 1 ✓ (one queue pair: nothing to set)"]
    assert guest.asked == ["guest-sync"]


def test_after_the_agent_answers_a_spec_that_needs_no_guest_command_asks_nothing_more(tmp_path: Path) -> None:
    # One queue pair and no hooks: not even which commands the agent offers (a guest that blocks guest-exec
    # comes up, since vmrun would run nothing there).
    spec = spec_with(nics=[{"id": "net0", "queues": 1}])
    guest = FakeGuest(spec.nics[0].guest_mac, blocked=frozenset({"guest-exec"}))
    assert run_step(tmp_path, guest, spec, run_guest_steps) == [
        "ethtool net0 combined 1 ✓ (one queue pair: nothing to set)"]
    assert guest.asked == ["guest-sync"]


@pytest.mark.parametrize(("changes", "purpose"), [
    ({}, "to set NIC queues"),
    ({"nics": [{"id": "net0", "queues": 1}], "post_boot": [{"run": ["true"]}]}, "to run post_boot hooks"),
    ({"post_boot": [{"run": ["true"]}]}, "to set NIC queues and to run post_boot hooks"),
])
def test_guest_commands_the_steps_need_are_checked_first(
    tmp_path: Path, changes: dict[str, object], purpose: str
) -> None:
    spec = spec_with(**changes)
    guest = FakeGuest(spec.nics[0].guest_mac, blocked=frozenset({"guest-exec"}))
    with pytest.raises(AgentError, match=f"has guest-exec disabled .*; vmrun needs it {purpose}$"):
        run_step(tmp_path, guest, spec, run_guest_steps)
    assert guest.asked == ["guest-sync", "guest-info"]


def test_failing_post_boot_hook_shows_its_stderr(tmp_path: Path) -> None:
    spec = spec_with(post_boot=[{"run": ["mount", "-t", "9p", "data", "/mnt"]}])
    guest = FakeGuest("52:54:00:00:00:01", hook_exit=32)
    with pytest.raises(HookError, match=r"post_boot\[0\] `mount -t 9p data /mnt` failed: exit code 32: mount: no such"):
        run_step(tmp_path, guest, spec, run_post_boot_hooks)
