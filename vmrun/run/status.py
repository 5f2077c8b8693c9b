"""What runs: `status` and the commands that need a running VM (`exec`, `console`).

Read only, and apart from the lifecycle: asking eight VMs how they are loads neither preflight nor render.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs

from vmrun.errors import AgentError, UsageError
from vmrun.host.system import Host
from vmrun.qemu.process import find_qemu, is_our_qemu, read_pid
from vmrun.record import Record
from vmrun.state.locations import Places, RunPaths
from vmrun.state.vmstate import (
    INCOMING,
    MIGRATED,
    DamagedState,
    VmState,
    read_state,
    recorded_configuration,
    vm_names,
)

if TYPE_CHECKING:
    from vmrun.spec.model import Spec

AGENT_PROBE_TIMEOUT = 1.0  # status and exec: an agent that is up answers at once


@attrs.frozen(repr=False)
class VmStatus(Record):
    name: str
    # running | stopped | dead | prepared | damaged (its state file cannot be read) | migrated (the guest left;
    # its qemu here is paused for good) | incoming (qemu waits for a migration that has not arrived)
    state: str
    pid: int | None
    accel: str
    run_dir: str
    uptime: float | None
    agent: bool | None
    # The guest's addresses by interface, as the agent reports them; empty when unknown.
    addresses: dict[str, list[str]] = attrs.field(factory=dict, hash=False)
    # What the host no longer holds for the running VM (a tap gone or off its bridge, KSM off, ...).
    host_drift: tuple[str, ...] = ()
    # A running VM's user-mode port forwards: "tcp 127.0.0.1:2222 -> guest port 22".
    forwards: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def status(host: Host, places: Places, names: list[str] | None = None) -> list[VmStatus]:
    """Each VM's status, in name order. VMs are asked at once, each in its own thread: a guest agent takes
    its time to answer, and eight of them one after another would add up."""
    names = names or vm_names(places.run_root)
    if len(names) <= 1:
        return [_status_of(host, places.of(name), name) for name in names]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return list(pool.map(lambda name: _status_of(host, places.of(name), name), names))


def _status_of(host: Host, paths: RunPaths, name: str) -> VmStatus:
    try:
        state, damaged = read_state(paths), False
    except DamagedState:
        state, damaged = None, True
    pid = find_qemu(host, paths, name)
    alive = is_our_qemu(host, pid, name)
    # "prepared": `vmrun preflight` made the host changes and no qemu was meant to run.
    vm_state, agent = "damaged" if damaged else "prepared" if state is not None and not state.argv else "dead", None
    addresses: dict[str, list[str]] = {}
    if alive and not damaged:
        vm_state = run_state(paths, state)
        if vm_state == "running" and paths.agent_socket.exists():
            agent, addresses = probe_agent(paths)
    started_from = recorded_configuration(state).spec if state is not None and alive else None
    return VmStatus(
        name=name, state=vm_state, pid=pid if alive else None, accel=state.accel if state else "unknown",
        run_dir=str(paths.run_dir), uptime=time.time() - state.started_at if state and alive else None, agent=agent,
        addresses=addresses, host_drift=_host_drift(started_from, host) if started_from is not None else (),
        forwards=_forwards(started_from) if started_from is not None else (),
    )


def _forwards(spec: Spec) -> tuple[str, ...]:
    from vmrun.spec.usernet import forwards, is_user

    return tuple(str(forward) for nic in spec.nics if is_user(nic) for forward in forwards(nic))


def _host_drift(started_from: Spec, host: Host) -> tuple[str, ...]:
    from vmrun.state.hostdrift import host_differences  # only for a running VM

    return tuple(host_differences(started_from, host, as_root=host.is_root_user()))


# qemu's run states that say which side of a migration this is.
MIGRATION_SIDES = {"postmigrate": MIGRATED, "inmigrate": INCOMING}


def run_state(paths: RunPaths, state: VmState | None) -> str:
    """A live qemu's state in vmrun's words. qemu knows best whether the guest runs here; when it cannot
    say, a migration's mark in the state does (a source paused after its guest left must never read as a
    VM to resume)."""
    from vmrun.qemu.monitor import Monitor

    mark = state.migration if state is not None else None
    try:
        with Monitor(paths.qmp_socket) as monitor:
            monitor.connect(timeout=AGENT_PROBE_TIMEOUT * 2)
            status = monitor.status()
    except Exception:  # noqa: BLE001 - a wedged monitor is a fact to show, not a reason to fail
        return mark or "stopped"
    return "running" if status == "running" else MIGRATION_SIDES.get(status) or mark or "stopped"


def probe_agent(paths: RunPaths) -> tuple[bool, dict[str, list[str]]]:
    """Whether the agent answers, and the guest's addresses when it tells them."""
    from vmrun.guest.agent import GuestAgent, addresses_by_interface

    try:
        with GuestAgent(paths.agent_socket) as agent:
            agent.wait_ready(timeout=AGENT_PROBE_TIMEOUT)
            try:
                return True, addresses_by_interface(agent.interfaces())
            except AgentError:  # an agent with guest-network-get-interfaces disabled still answers
                return True, {}
    except AgentError:
        return False, {}


def running_spec(host: Host, places: Places, name: str) -> tuple[RunPaths, Spec]:
    """A running VM's paths and the spec it started from."""
    paths = running_paths(host, places, name)
    state = read_state(paths)
    spec = recorded_configuration(state).spec if state is not None else None
    if spec is None:
        raise UsageError(f"{name}: its state records no spec it started from",
                         hint="vmrun up --restart SPEC starts it again with one")
    return paths, spec


def running_paths(host: Host, places: Places, name: str) -> RunPaths:
    paths = places.of(name)
    if not is_our_qemu(host, read_pid(paths), name):
        raise UsageError(f"{name} is not running", hint="vmrun status lists the VMs")
    return paths
