"""What runs: `status` and the commands that need a running VM (`exec`, `console`, `cp`, `ssh`).

`status` answers from what the host knows: each VM's state file read as plain JSON and its pid checked in
/proc. It imports neither attrs, cattrs, the spec model nor qemu.qmp (tests/test_imports.py holds it to
that); only `status --addresses` asks the VMs, all at once, each with a short deadline, and a VM in the
middle of a migration (its state marked) has its qemu asked which side of it the guest is on.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from vmrun.errors import UsageError
from vmrun.host.dirs import ROOT_RUN_ROOT
from vmrun.host.view import HostView
from vmrun.qemu.process import find_qemu, is_our_qemu, read_pid
from vmrun.state.glance import INCOMING, MIGRATED, OUTGOING, DamagedState, glance, has_run, vm_names
from vmrun.state.locations import Places, RunPaths
from vmrun.units import iso_time

if TYPE_CHECKING:
    from vmrun.spec.model import Spec

AGENT_PROBE_TIMEOUT = 1.0  # status -a and exec: an agent that is up answers at once
MIGRATION_SIDES = {"postmigrate": MIGRATED, "inmigrate": INCOMING}  # qemu's run state on each side
# What a live qemu's mark says when qemu cannot be asked (its monitor held by the migration itself): a source
# still sending runs its guest until qemu says it left.
MARK_SAYS = {INCOMING: INCOMING, OUTGOING: "running", MIGRATED: MIGRATED}


class VmStatus:
    """One VM as `status` shows it. `agent` and `addresses` are None unless the agents were asked (-a);
    then addresses is None for a VM whose agent did not answer in time."""

    __slots__ = ("accel", "addresses", "agent", "forwards", "migration", "name", "pid", "run_dir", "started_at",
                 "state")

    def __init__(self, name: str, state: str, pid: int | None, accel: str, run_dir: str, started_at: float | None,
                 forwards: tuple[str, ...], migration: str | None = None) -> None:
        # state: running | stopped | dead | prepared | damaged (its state file cannot be read)
        self.name, self.state, self.pid, self.accel, self.run_dir = name, state, pid, accel, run_dir
        self.started_at, self.forwards = started_at, forwards  # forwards: "tcp 127.0.0.1:2222 -> guest port 22"
        self.migration = migration  # a live qemu's migration mark (vmrun.state.glance)
        self.agent: bool | None = None
        self.addresses: dict[str, list[str]] | None = None

    @property
    def uptime(self) -> float | None:
        return time.time() - self.started_at if self.started_at is not None and self.pid is not None else None

    def to_json(self, *, addresses: bool) -> dict[str, Any]:
        started = None if self.started_at is None or self.pid is None else \
            iso_time(self.started_at)
        row: dict[str, Any] = {
            "name": self.name, "state": self.state, "pid": self.pid, "accel": self.accel, "run_dir": self.run_dir,
            "started_at": started, "uptime": self.uptime, "forwards": list(self.forwards),
        }
        if addresses:
            row |= {"agent": self.agent, "addresses": self.addresses}
        return row


def status(host: HostView, places: Places, names: list[str] | None = None, *,
           addresses: bool = False) -> list[VmStatus]:
    """Each VM's status, in name order; a NAME with no run directory is a UsageError. With addresses, the
    running VMs are asked at once, each in its own thread: eight agents one after another would add up."""
    if names:
        for name in names:
            existing_paths(places, name)
    statuses = [_status_of(host, places.of(name), name) for name in names or vm_names(places.run_root)]
    live = [vm for vm in statuses if vm.pid is not None and vm.state in ("running", INCOMING, MIGRATED)]
    # A mark alone cannot say whether a guest arrived or left after the mark was written: qemu can.
    asked = live if addresses else [vm for vm in live if vm.migration is not None]
    if asked:
        from concurrent.futures import ThreadPoolExecutor

        # QMP and the agent of every VM at once: each waits on its own guest, not on the others. A guest that
        # left, or has not arrived, has no agent to ask.
        agents = [vm for vm in live if vm.state == "running"] if addresses else []
        questions = [*((_ask_qmp, vm) for vm in asked), *((_ask_agent, vm) for vm in agents)]
        with ThreadPoolExecutor(max_workers=len(questions)) as pool:
            list(pool.map(lambda pair: pair[0](pair[1], places.of(pair[1].name)), questions))
    return statuses


def vm_state(host: HostView, places: Places, name: str) -> str:
    """What `status` says of one VM without asking qemu: `stopped` where it has no run directory here."""
    paths = places.of(name)
    return _status_of(host, paths, name).state if has_run(paths) else "stopped"


def _status_of(host: HostView, paths: RunPaths, name: str) -> VmStatus:
    try:
        state, damaged = glance(paths), False
    except DamagedState:
        state, damaged = None, True
    pid = find_qemu(host, paths, name)
    alive = is_our_qemu(host, pid, name)
    mark = (state or {}).get("migration")
    mark = mark if mark in MARK_SAYS else None
    if damaged:
        vm_state = "damaged"
    elif alive:
        # A migration's mark outranks "running": a source paused after its guest left must never read as a VM
        # to resume, nor a destination still waiting as one that runs.
        vm_state = MARK_SAYS[mark] if mark is not None else "running"
    elif mark in (INCOMING, MIGRATED):  # its qemu gone too: what is left here of a guest that is not here
        vm_state = mark
    else:  # "prepared": `vmrun preflight` made the host changes and no qemu was meant to run.
        vm_state = "prepared" if state is not None and not state.get("argv") else "dead"
    state = state or {}
    started_at = state.get("started_at")
    return VmStatus(
        name=name, state=vm_state, pid=pid if alive else None, accel=str(state.get("accel", "unknown")),
        run_dir=str(paths.run_dir), started_at=started_at if isinstance(started_at, (int, float)) else None,
        forwards=tuple(_shown(forward) for forward in state.get("forwards") or ()) if alive else (),
        migration=mark if alive else None,
    )


def _shown(forward: Any) -> str:
    """A recorded forward (vmstate.PortForward as JSON, with the port `up` picked for an `auto` one) as the
    spec's usernet.Forward shows it."""
    if not isinstance(forward, dict):
        return str(forward)
    return f"{forward.get('protocol')} {forward.get('address')}:{forward.get('host_port')} -> guest port " \
           f"{forward.get('guest_port')}"


def _ask_qmp(vm: VmStatus, paths: RunPaths) -> None:
    """A paused guest is "stopped"; qemu also knows a migration's side better than the recorded mark."""
    vm.state = run_state(paths, vm.migration)


def _ask_agent(vm: VmStatus, paths: RunPaths) -> None:
    vm.agent, vm.addresses = probe_agent(paths)


def run_state(paths: RunPaths, mark: str | None) -> str:
    """A live qemu's state in vmrun's words. qemu knows best whether the guest runs here; when it cannot
    say, the migration's mark recorded in the state does (a source paused after its guest left must never
    read as a VM to resume)."""
    from vmrun.qemu.monitor import Monitor

    fallback = MARK_SAYS.get(mark or "", "stopped")
    try:
        with Monitor.connected(paths.qmp_socket, timeout=AGENT_PROBE_TIMEOUT * 2) as monitor:
            status = monitor.status()
    except Exception:  # noqa: BLE001 - a wedged monitor is a fact to show, not a reason to fail
        return fallback
    return "running" if status == "running" else MIGRATION_SIDES.get(status) or fallback


def probe_agent(paths: RunPaths) -> tuple[bool | None, dict[str, list[str]] | None]:
    """Whether the agent answers (None: the VM has no agent), and the guest's addresses when it tells them
    (None: it did not answer)."""
    from vmrun.errors import AgentError
    from vmrun.guest.agent import GuestAgent, addresses_by_interface

    if not paths.agent_socket.exists():
        return None, None
    try:
        with GuestAgent(paths.agent_socket) as agent:
            interfaces = agent.interfaces_at_once(timeout=AGENT_PROBE_TIMEOUT)
            return True, addresses_by_interface(interfaces) if interfaces is not None else {}
    except AgentError:
        return False, None


def refuse_if_roots(places: Places, name: str) -> None:
    """A UsageError when the VM may be root's: root's VMs live under another run root, which a user may not
    read; nothing for root, or under that same run root."""
    theirs = ROOT_RUN_ROOT / name
    if os.geteuid() != 0 and places.run_root.resolve() != ROOT_RUN_ROOT.resolve():
        try:
            os.stat(theirs)
        except PermissionError:
            raise UsageError(f"no VM {name} under {places.run_root}; it may be root's, under {ROOT_RUN_ROOT}, "
                             "which you may not read", hint="run the same command with sudo") from None
        except OSError:
            pass
        else:
            raise UsageError(f"no VM {name} under {places.run_root}: it is root's ({theirs})",
                             hint="run the same command with sudo")


def existing_paths(places: Places, name: str) -> RunPaths:
    """A VM's paths when it has a run directory here. Otherwise a UsageError, which says to a user who is not
    root that the VM may be root's."""
    paths = places.of(name)
    if has_run(paths):
        return paths
    refuse_if_roots(places, name)
    raise UsageError(f"no VM {name} under {places.run_root}", hint="vmrun status lists the VMs")


def running_spec(host: HostView, places: Places, name: str) -> tuple[RunPaths, Spec]:
    """A running VM's paths and the spec it started from."""
    from vmrun.state.vmstate import read_state, recorded_configuration

    paths = running_paths(host, places, name)
    state = read_state(paths)
    spec = recorded_configuration(state).spec if state is not None else None
    if spec is None:
        raise UsageError(f"{name}: its state records no spec it started from",
                         hint="vmrun up --restart SPEC starts it again with one")
    return paths, spec


def running_paths(host: HostView, places: Places, name: str) -> RunPaths:
    paths = existing_paths(places, name)
    if not is_our_qemu(host, read_pid(paths), name):
        raise UsageError(f"{name} is not running", hint="vmrun status lists the VMs")
    return paths
