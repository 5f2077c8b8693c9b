"""The pipeline behind `up`, `down` and `status`: preflight -> render -> launch -> agent -> hooks."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from vmrun.errors import AgentError, LaunchError, UsageError
from vmrun.facts import HostFacts, gather_facts
from vmrun.host import Host
from vmrun.locations import Places, RunPaths
from vmrun.machine import died_during_startup, is_our_qemu, launch, read_pid, stop
from vmrun.preflight import (
    AppliedChange,
    Others,
    Status,
    apply_plan,
    ksm_restore_value,
    plan_preflight,
    undo_changes,
)
from vmrun.progress import Say
from vmrun.render import render
from vmrun.spec import Firmware, Spec
from vmrun.state import VmState, create_run_dir, read_state, remove_run_dir, vm_names, write_state

if TYPE_CHECKING:
    from vmrun.agent import GuestAgent



AGENT_PROBE_TIMEOUT = 1.0  # status and exec: an agent that is up answers at once
STARTUP_SLICE = 2.0  # `up` checks qemu is still alive this often while waiting for the agent


@attrs.frozen
class VmStatus:
    name: str
    state: str  # running | stopped | dead
    pid: int | None
    accel: str
    run_dir: str
    uptime: float | None
    agent: bool | None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _clear_dead_run(host: Host, places: Places, name: str, say: Say) -> None:
    paths = places.of(name)
    state = read_state(paths)
    if state is None and not paths.run_dir.exists():
        return
    if is_our_qemu(host, read_pid(paths), name):
        raise UsageError(f"{name} is already running (pid {read_pid(paths)})", hint=f"vmrun down {name}")
    say(f"{name}: cleaning up after a run that died ({paths.run_dir})")
    undo_host_changes(host, places, state, say)
    remove_run_dir(paths)


def others_than(host: Host, places: Places, name: str) -> Others:
    """What the other running vmrun VMs hold: their writable disks, whether they want KSM."""
    disks: set[str] = set()
    want_ksm = False
    ksm_previous: str | None = None
    for other in vm_names(places.run_root):
        paths = places.of(other)
        state = read_state(paths)
        if other == name or state is None or not is_our_qemu(host, read_pid(paths), other):
            continue
        disks.update(state.writable_disks)
        want_ksm = want_ksm or state.wants_ksm
        # Whoever turned KSM on knows the value to restore; the last VM down must inherit it.
        ksm_previous = ksm_previous or ksm_restore_value(AppliedChange.from_json(c) for c in state.changes)
    return Others(writable_disks=frozenset(disks), want_ksm=want_ksm, ksm_previous=ksm_previous)


def undo_host_changes(host: Host, places: Places, state: VmState | None, say: Say) -> None:
    """Preflight's host changes for this VM, undone newest first."""
    if state is None or not state.changes:
        return
    changes = [AppliedChange.from_json(change) for change in state.changes]
    for problem in undo_changes(changes, host, others=others_than(host, places, state.name)):
        say(f"could not undo: {problem}")


def _prepare_uefi_vars(spec: Spec, paths: RunPaths, facts: HostFacts, *, fresh: bool, say: Say) -> None:
    """A per-VM copy of the OVMF variable store: it holds the guest's boot entries across runs."""
    if spec.boot.firmware is not Firmware.UEFI:
        return
    if fresh or not paths.uefi_vars.exists():
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(facts.ovmf_vars_template, paths.uefi_vars)
        say(f"fresh UEFI variables in {paths.uefi_vars}")


def up(spec: Spec, spec_path: Path, host: Host, places: Places, *, fresh: bool, say: Say) -> VmState:
    paths = places.of(spec.name)
    _clear_dead_run(host, places, spec.name, say)
    facts = gather_facts(host, spec.qemu.binary, asked_to_run=True)
    plan = plan_preflight(spec, host, facts, others=others_than(host, places, spec.name))
    say(f"accel {plan.accel.accel}: {plan.accel.reason}")
    for check in plan.checks:
        if check.status is Status.WARN:
            say(f"warning: {check.name}: {check.message}")
    argv = render(spec, facts, paths)
    applied = apply_plan(plan, host)
    if applied:
        say(f"preflight: {len(applied)} host change(s) applied")
    state = VmState(
        name=spec.name, spec_path=str(spec_path), argv=tuple(argv), accel=str(plan.accel.accel),
        accel_reason=plan.accel.reason, wants_ksm=spec.host.ksm,
        writable_disks=tuple(str(disk.path) for disk in spec.disks if not disk.readonly),
        changes=tuple(change.to_json() for change in applied),
    )
    try:
        create_run_dir(paths)
        write_state(paths, state)
        _prepare_uefi_vars(spec, paths, facts, fresh=fresh, say=say)
        say(f"launching {spec.name}")
        pid = launch(host, [str(_checked_program(facts)), *argv[1:]], paths, memlock=plan.memlock)
    except BaseException:
        undo_changes(applied, host, rollback=True)
        remove_run_dir(paths)
        raise
    say(f"qemu pid {pid}")
    _confirm_running(paths)
    if spec.agent.enabled:
        _after_boot(spec, host, paths, pid, say)
    return state


def _checked_program(facts: HostFacts) -> Path:
    """The file preflight judged, not the name again: a link swapped since then changes nothing."""
    if facts.qemu_program is None:
        raise LaunchError("qemu.binary is not found")
    return facts.qemu_program


def _confirm_running(paths: RunPaths) -> None:
    from vmrun.monitor import Monitor

    with Monitor(paths.qmp_socket) as monitor:
        monitor.connect(timeout=10)
        status = monitor.status()
    if status != "running":
        raise died_during_startup(paths) if status == "shutdown" else LaunchError(f"qemu reports {status!r}")


def _after_boot(spec: Spec, host: Host, paths: RunPaths, pid: int, say: Say) -> None:
    from vmrun.agent import GuestAgent
    from vmrun.hooks import run_multiqueue_step, run_post_boot_hooks

    say(f"waiting for the guest agent (up to {spec.agent.timeout:g} s)")
    with GuestAgent(paths.agent_socket) as agent:
        waited = _wait_for_agent(agent, spec, host, paths, pid)
        say(f"guest agent ready after {waited:.1f} s")
        agent.require("guest-exec", "guest-exec-status", "guest-network-get-interfaces",
                      purpose="to set NIC queues and run post_boot hooks")
        run_multiqueue_step(agent, spec, say)
        run_post_boot_hooks(agent, spec, say)


def _wait_for_agent(agent: GuestAgent, spec: Spec, host: Host, paths: RunPaths, pid: int) -> float:
    """The agent's own wait, in slices, so a qemu that dies meanwhile is reported as such (exit 4)."""
    started = time.monotonic()
    deadline = started + spec.agent.timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            agent.wait_ready(timeout=max(0.1, min(STARTUP_SLICE, remaining)))
            return time.monotonic() - started
        except AgentError:
            if not is_our_qemu(host, pid, spec.name):
                raise died_during_startup(paths) from None
            if time.monotonic() >= deadline:
                raise AgentError(
                    f"{spec.name}: the guest agent did not answer within {spec.agent.timeout:g} s",
                    hint=f"is qemu-ga running in the guest? the VM is still up: vmrun logs {spec.name}; "
                    f"vmrun down {spec.name}",
                ) from None


def down(name: str, host: Host, places: Places, *, timeout: float, force: bool, say: Say) -> str | None:
    """Stop the VM and undo its host changes; None when there was nothing to stop."""
    paths = places.of(name)
    state = read_state(paths)
    if state is None and not paths.run_dir.exists():
        return None
    how = stop(host, paths, name, timeout=timeout, force=force, say=say)
    undo_host_changes(host, places, state, say)
    remove_run_dir(paths)
    return how


def status(host: Host, places: Places, names: list[str] | None = None) -> list[VmStatus]:
    return [_status_of(host, places.of(name), name) for name in (names or vm_names(places.run_root))]


def _status_of(host: Host, paths: RunPaths, name: str) -> VmStatus:
    from vmrun.monitor import Monitor

    state = read_state(paths)
    pid = read_pid(paths)
    alive = is_our_qemu(host, pid, name)
    vm_state, agent = "dead", None
    if alive:
        try:
            with Monitor(paths.qmp_socket) as monitor:
                monitor.connect(timeout=AGENT_PROBE_TIMEOUT * 2)
                vm_state = "running" if monitor.status() == "running" else "stopped"
        except Exception:  # noqa: BLE001 - a wedged monitor is a fact to show, not a reason to fail
            vm_state = "stopped"
        agent = agent_reachable(paths) if vm_state == "running" and (paths.agent_socket.exists()) else None
    return VmStatus(
        name=name, state=vm_state, pid=pid if alive else None, accel=state.accel if state else "unknown",
        run_dir=str(paths.run_dir), uptime=time.time() - state.started_at if state and alive else None, agent=agent,
    )


def agent_reachable(paths: RunPaths) -> bool:
    from vmrun.agent import GuestAgent

    try:
        with GuestAgent(paths.agent_socket) as agent:
            agent.wait_ready(timeout=AGENT_PROBE_TIMEOUT)
        return True
    except AgentError:
        return False


def running_paths(host: Host, places: Places, name: str) -> RunPaths:
    paths = places.of(name)
    if not is_our_qemu(host, read_pid(paths), name):
        raise UsageError(f"{name} is not running", hint="vmrun status lists the VMs")
    return paths
