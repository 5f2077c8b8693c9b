"""After boot, over the guest agent: the built-in multiqueue step, then the user's post_boot hooks."""

from __future__ import annotations

import re
import shlex
import time

from vmrun.errors import HookError
from vmrun.guest.agent import ExecResult, GuestAgent
from vmrun.progress import Say
from vmrun.spec.model import Nic, Spec
from vmrun.spec.usernet import tap_nics

ETHTOOL_TIMEOUT = 30.0
_CURRENT_COMBINED = re.compile(r"Current hardware settings:.*?^Combined:\s*(\d+)", re.MULTILINE | re.DOTALL)


def current_combined(ethtool_l_output: str) -> int | None:
    """"Combined" under "Current hardware settings" of `ethtool -l`."""
    match = _CURRENT_COMBINED.search(ethtool_l_output)
    return int(match.group(1)) if match else None


def describe_failure(result: ExecResult) -> str:
    output = (result.stderr or result.stdout).decode(errors="replace").strip()
    ended = f"signal {result.signal}" if result.signal is not None else f"exit code {result.exitcode}"
    return f"{ended}: {output}" if output else ended


def _combined(agent: GuestAgent, nic: Nic, interface: str) -> int | None:
    result = agent.exec(["ethtool", "-l", interface], timeout=ETHTOOL_TIMEOUT)
    if not result.ok:
        raise HookError(f"nics {nic.id}: `ethtool -l {interface}` failed in the guest: {describe_failure(result)}")
    return current_combined(result.stdout.decode(errors="replace"))


def set_queue_pairs(agent: GuestAgent, spec: Spec, nic: Nic) -> tuple[str, bool]:
    """The guest interface with this multiqueue NIC's MAC gets `combined N`: read first, and only when the
    count differs set it and read it back (one guest-exec in the common case). Returns (interface, was set)."""
    mac = nic.guest_mac
    interface = agent.interface_by_mac(mac)
    if interface is None:
        raise HookError(f"nics {nic.id}: no guest interface has MAC {mac}",
                        hint="is virtio_net loaded in the guest?")
    if _combined(agent, nic, interface.name) == nic.queues:
        return interface.name, False
    result = agent.exec(["ethtool", "-L", interface.name, "combined", str(nic.queues)], timeout=ETHTOOL_TIMEOUT)
    # ethtool exits non-zero when the count is already set on some drivers; the read-back decides.
    combined = _combined(agent, nic, interface.name)
    if combined != nic.queues:
        detail = "" if result.ok else f" (ethtool -L: {describe_failure(result)})"
        raise HookError(
            f"nics {nic.id}: guest {interface.name} has {combined} combined queues, not {nic.queues}{detail}"
        )
    return interface.name, True


def run_multiqueue_step(agent: GuestAgent, spec: Spec, say: Say) -> None:
    """Each multiqueue tap NIC is found in the guest by its MAC and gets its count. A NIC with one queue pair
    asks the guest nothing: without mq=on the device offers it no other count. A user-mode NIC has one
    queue pair, whatever the guest says, and no line."""
    for nic in tap_nics(spec):
        if nic.queues == 1:
            say(f"ethtool {nic.id} combined 1 ✓ (one queue pair: nothing to set)")
            continue
        started = time.monotonic()
        interface, was_set = set_queue_pairs(agent, spec, nic)
        elapsed_ms = (time.monotonic() - started) * 1000
        how = "set" if was_set else "already"
        say(f"ethtool {nic.id} {interface} combined {nic.queues} ✓ ({how}, {elapsed_ms:.0f} ms)")


def run_guest_steps(agent: GuestAgent, spec: Spec, say: Say) -> None:
    """What `up` does over the agent once it answers: the multiqueue step, then the post_boot hooks. The
    agent commands they use are checked first, and only those: when they need none (one queue pair per NIC,
    no hooks), the guest is asked nothing more."""
    commands, purpose = _required_commands(spec)
    if commands:
        agent.require(*commands, purpose=purpose)
    run_multiqueue_step(agent, spec, say)
    run_post_boot_hooks(agent, spec, say)


def _required_commands(spec: Spec) -> tuple[tuple[str, ...], str]:
    commands: dict[str, None] = {}
    purposes = []
    if any(nic.queues > 1 for nic in tap_nics(spec)):
        commands |= dict.fromkeys(("guest-network-get-interfaces", "guest-exec", "guest-exec-status"))
        purposes.append("to set NIC queues")
    if spec.post_boot:
        commands |= dict.fromkeys(("guest-exec", "guest-exec-status"))
        purposes.append("to run post_boot hooks")
    return tuple(commands), " and ".join(purposes)


def run_post_boot_hooks(agent: GuestAgent, spec: Spec, say: Say) -> None:
    for index, hook in enumerate(spec.post_boot):
        command = shlex.join(hook.run)
        result = agent.exec(hook.run, timeout=hook.timeout)
        if not result.ok:
            raise HookError(f"post_boot[{index}] `{command}` failed: {describe_failure(result)}")
        say(f"post_boot[{index}] {command} ✓")
