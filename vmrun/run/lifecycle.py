"""The pipeline behind `up`, `preflight` and `down`: preflight -> render -> launch -> agent -> hooks."""

from __future__ import annotations

import enum
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from vmrun.crashpoints import crash_point
from vmrun.errors import AgentError, ConfigurationDiffers, LaunchError, UsageError
from vmrun.files import write_whole
from vmrun.guest.cloudinit import Seed, make_seed, prepare_seed
from vmrun.host.facts import HostFacts, gather_facts
from vmrun.host.ports import bind_error, free_port
from vmrun.host.system import Host, format_cpu_list
from vmrun.preflight.apply import apply_plan
from vmrun.preflight.plan import AppliedChange, Plan, Status, plan_preflight, refuse
from vmrun.progress import Say
from vmrun.qemu.process import died_during_startup, import_in_background, is_our_qemu, launch, load_launcher, read_pid
from vmrun.qemu.render import render
from vmrun.run.ending import abort_start, clear_dead_run, others_than, running_state, stop_and_undo
from vmrun.run.status import run_state
from vmrun.signals import shielded, sigterm_interrupts
from vmrun.spec.images import url_bases, with_cached_bases
from vmrun.spec.load import converter
from vmrun.spec.model import Firmware, Nic, Spec
from vmrun.spec.usernet import AUTO_PORT, Forward, forwards, is_user, refused_forward, tap_nics, with_host_ports
from vmrun.state.drift import Configuration, differences
from vmrun.state.glance import MIGRATED, OUTGOING
from vmrun.state.hostdrift import host_differences
from vmrun.state.locations import Places, RunPaths
from vmrun.state.locks import host_lock, vm_lock
from vmrun.state.vmstate import PortForward, StateJournal, VmState, recorded_configuration, remove_run_dir

if TYPE_CHECKING:
    from vmrun.guest.agent import GuestAgent

STARTUP_SLICE = 2.0  # `up` checks qemu is still alive (and not interrupted) this often while waiting for the agent


def prepare_uefi_vars(spec: Spec, paths: RunPaths, facts: HostFacts, *, fresh: bool, say: Say) -> None:
    """A per-VM copy of the OVMF variable store: it holds the guest's boot entries across runs."""
    if spec.boot.firmware is not Firmware.UEFI:
        return
    if fresh or not paths.uefi_vars.exists():
        paths.make_state_dir()
        write_whole(paths.uefi_vars, lambda partial: shutil.copyfile(facts.ovmf_vars_template, partial))
        say(f"fresh UEFI variables in {paths.uefi_vars}")


def say_plan(plan: Plan, say: Say) -> None:
    say(f"accel {plan.accel.accel}: {plan.accel.reason}")
    for check in plan.findings:
        if check.status is Status.WARN:
            say(f"warning: {check.name}: {check.message}")


def apply_preflight(
    spec: Spec, spec_path: Path, host: Host, places: Places, facts: HostFacts, *,
    configuration: Configuration, show: Callable[[Plan], None], say: Say, migration: str | None = None,
    port_forwards: tuple[PortForward, ...] = (),
) -> tuple[Plan, StateJournal]:
    """Plan and apply the host changes under the host lock, journaled in a new run directory."""
    paths = places.of(spec.name)
    with host_lock(places):
        plan = plan_preflight(with_cached_bases(spec, places.image_cache), host, facts,
                              others=others_than(host, places, spec.name), run_dir=paths.run_dir)
        show(plan)
        refuse(plan)
        journal = StateJournal.begin(paths, VmState(
            name=spec.name, spec_path=str(spec_path), argv=configuration.argv, accel=str(plan.accel.accel),
            accel_reason=plan.accel.reason, wants_ksm=spec.host.ksm,
            writable_disks=tuple(str(disk.path) for disk in spec.disks if not disk.readonly),
            taps=tuple(nic.host_tap for nic in tap_nics(spec)),
            vfio=tuple(vfio.host for vfio in spec.vfio),
            spec=converter.unstructure(spec),
            seed_id=configuration.seed_id,
            forwards=port_forwards,
            migration=migration,
        ))
        crash_point("after creating the run directory")
        try:
            apply_plan(plan, host, journal=journal)
        except BaseException:
            with shielded():
                if journal.entries:
                    say(f"{paths.run_dir} keeps what could not be undone: vmrun down {spec.name} tries again")
                else:
                    remove_run_dir(paths)
            raise
    return plan, journal


def prepare(spec: Spec, spec_path: Path, host: Host, places: Places, *, show: Callable[[Plan], None],
            say: Say) -> tuple[AppliedChange, ...]:
    """`vmrun preflight`: the host changes alone, journaled like `up`'s, so `vmrun down NAME` undoes them."""
    with vm_lock(places, spec.name, wait=False, say=say), sigterm_interrupts():
        clear_dead_run(host, places, spec.name, say)
        facts = gather_facts(host, spec.qemu.binary, asked_to_run=True)
        no_qemu = Configuration(spec, argv=())
        with holding_bases(spec, places, say):
            return apply_preflight(spec, spec_path, host, places, facts, configuration=no_qemu, show=show,
                                   say=say)[1].entries


class Outcome(enum.StrEnum):
    STARTED = "started"
    UP_TO_DATE = "up to date"
    RESTARTED = "restarted"


def up(
    spec: Spec, spec_path: Path, host: Host, places: Places, *, say: Say, fresh: bool = False,
    restart: bool = False, stop_timeout: float = 30.0, interrupted: threading.Event | None = None,
) -> Outcome:
    """Declarative: a VM running with this configuration is left alone; one running with another is
    refused unless restart. Otherwise preflight, launch, agent, hooks: until qemu runs with its agent
    answering, any failure or interruption undoes it all; an agent that never answers or a failed hook
    leaves the VM up to inspect. `interrupted` lets a caller in another thread stop the agent wait."""
    paths = places.of(spec.name)
    load_launcher()
    with vm_lock(places, spec.name, wait=False, say=say), sigterm_interrupts():
        facts = gather_facts(host, spec.qemu.binary, asked_to_run=True)
        running = running_state(host, paths, spec.name)
        if running is not None and running.migration in (OUTGOING, MIGRATED) \
                and run_state(paths, running.migration) == MIGRATED:
            # Its guest runs on another host now: this paused qemu is no VM to leave alone or to restart.
            raise UsageError(f"{spec.name} migrated to another host; its qemu here is paused for good",
                             hint=f"vmrun migrate --abort {spec.name} removes it")
        asked, spec = spec, with_host_ports(spec, _port_picker(running, pick_free=True))
        configuration, seed = configuration_of(spec, spec_path, facts, paths)
        argv = list(configuration.argv)
        outcome = Outcome.STARTED
        if running is not None:
            changed = _running_differences(running, configuration, host, as_root=facts.drop_privileges,
                                           pid=read_pid(paths))
            if not changed:
                return Outcome.UP_TO_DATE
            if not restart:
                raise ConfigurationDiffers(f"{spec.name} runs with another configuration: {'; '.join(changed)}",
                                           hint=f"vmrun up --restart {spec_path} applies it (a graceful down, then up)")
        with holding_bases(spec, places, say):  # before a restart stops the VM: a failed download leaves it running
            if running is not None:
                say(f"restarting for {'; '.join(changed)}")
                stop_and_undo(host, places, spec.name, timeout=stop_timeout, force=False, say=say)
                outcome = Outcome.RESTARTED
            clear_dead_run(host, places, spec.name, say)
            plan, journal = apply_preflight(
                spec, spec_path, host, places, facts, configuration=configuration,
                show=lambda plan: say_plan(plan, say), say=say, port_forwards=_port_forwards(asked, spec),
            )
        if plan.changes:
            say(f"preflight: {len(plan.changes)} host change(s) applied")
        pid: int | None = None
        try:
            prepare_uefi_vars(spec, paths, facts, fresh=fresh, say=say)
            prepare_seed(seed, paths, say)
            crash_point("before launching qemu")
            say(f"launching {spec.name}")
            with _importing_meanwhile("vmrun.qemu.monitor"):
                pid = launch_qemu(spec, [str(checked_program(facts)), *argv[1:]], paths, memlock=plan.memlock)
            crash_point("after launching qemu")
            say(f"qemu pid {pid}")
            if spec.machine.pinned:
                _pin(spec, host, paths, pid, say)
            _confirm_running(paths)
            if spec.agent.enabled:
                _after_boot(spec, host, paths, pid, say, interrupted)
        except AgentError:
            raise
        except BaseException:
            with shielded():
                abort_start(host, places, journal.state, say)
            raise
        return outcome


@contextmanager
def holding_bases(spec: Spec, places: Places, say: Say) -> Iterator[None]:
    """The images the spec's URL bases name, in the cache and kept there (`image rm` refuses them) until the
    VM's state names them: the host step before preflight, which makes overlays on them and writes the
    state. The downloader (urllib, hashlib) is imported only for a spec that has one."""
    if not url_bases(spec):
        yield
        return
    from vmrun.run.imagecache import ImageCache, bases_in_use

    with bases_in_use(spec, ImageCache(places.image_cache), say):
        crash_point("holding the base images")
        yield


def configuration_of(
    spec: Spec, spec_path: Path, facts: HostFacts, paths: RunPaths, *, seed_id: str | None = None
) -> tuple[Configuration, Seed | None]:
    """What the VM would run with now, and the seed that says so (built from the user's files as they are).
    seed_id: the instance-id of a seed built elsewhere (by a migration's source), whose files are not read."""
    seed = make_seed(spec, str(spec_path)) if spec.cloud_init is not None and seed_id is None else None
    argv = tuple(render(spec, facts, paths))
    return Configuration(spec, argv, seed.instance_id if seed else seed_id), seed


def _port_picker(running: VmState | None, *, pick_free: bool) -> Callable[[Nic, int, Forward], int]:
    """The host port for an ``auto`` forward: the one a running VM got (so it stays "up to date" and keeps its
    port across a restart), else a free one; without pick_free, a placeholder that differs from any port."""
    kept = {(forward.nic, forward.index, forward.forward): forward.host_port
            for forward in (running.forwards if running is not None else ())}

    def pick(nic: Nic, index: int, forward: Forward) -> int:
        port = kept.get((nic.id, index, forward.text))
        if port is not None:
            return port
        return free_port(forward.protocol, forward.address) if pick_free else AUTO_PORT

    return pick


def _port_forwards(asked: Spec, runs: Spec) -> tuple[PortForward, ...]:
    """Each user-mode forward as the spec asks it and as the VM runs it."""
    return tuple(
        PortForward(nic=nic.id, index=index, forward=asked_forward.text, protocol=forward.protocol,
                    address=forward.address, host_port=forward.host_port, guest_port=forward.guest_port)
        for nic, running_nic in zip(asked.nics, runs.nics, strict=True) if is_user(nic)
        for index, (asked_forward, forward) in enumerate(zip(forwards(nic), forwards(running_nic), strict=True))
    )


def drift(spec: Spec, spec_path: Path, host: Host, places: Places) -> list[str] | None:
    """How the running VM differs from its spec now (empty: up to date); None when it is not running.
    Reads only: nothing untrusted is executed to render."""
    paths = places.of(spec.name)
    state = running_state(host, paths, spec.name)
    if state is None:
        return None
    facts = gather_facts(host, spec.qemu.binary)
    now, _ = configuration_of(with_host_ports(spec, _port_picker(state, pick_free=False)), spec_path, facts, paths)
    return _running_differences(state, now, host, as_root=facts.drop_privileges, pid=read_pid(paths))


def _running_differences(
    state: VmState, now: Configuration, host: Host, *, as_root: bool, pid: int | None
) -> list[str]:
    """How a running VM differs from what it would run with now, then what the host no longer holds for
    it (judged by the spec it started from, when it recorded one)."""
    recorded = recorded_configuration(state)
    started_from = recorded.spec or now.spec
    on_host = host_differences(started_from, host, as_root=as_root, pid=pid) if started_from is not None else []
    return [*differences(recorded, now), *on_host]


def launch_qemu(spec: Spec, argv: list[str], paths: RunPaths, *, memlock: int | None) -> int:
    try:
        return launch(argv, paths, memlock=memlock)
    except LaunchError as exc:
        refused = refused_forward(spec, str(exc), bind_error)
        if refused is None:
            raise
        raise refused from exc


def checked_program(facts: HostFacts) -> Path:
    """The file preflight judged, not the name again: a link swapped since then changes nothing."""
    if facts.qemu_program is None:
        raise LaunchError("qemu.binary is not found")
    return facts.qemu_program


@contextmanager
def _importing_meanwhile(module: str) -> Iterator[None]:
    """Import ``module`` in a thread while the block waits for something else. qemu takes ~50 ms to start,
    during which vmrun only waits; the QMP client that asks it next (qemu.qmp) then costs `up` nothing."""
    loader = import_in_background(module)
    try:
        yield
    finally:
        loader.join()


def _pin(spec: Spec, host: Host, paths: RunPaths, pid: int, say: Say) -> None:
    from vmrun.qemu.pinning import pin_and_start

    machine = spec.machine
    pins = pin_and_start(machine, host, paths, pid)
    vcpus = f"vCPUs on host CPUs {', '.join(map(str, machine.vcpu_pin))}; " if machine.vcpu_pin else ""
    emulator = f"qemu's other threads on {format_cpu_list(set(machine.emulator_pin))}" \
        if machine.emulator_pin else "qemu's other threads left as they were"
    say(f"pinned {len(pins)} qemu threads ({vcpus}{emulator}), then started the guest")


def _confirm_running(paths: RunPaths) -> None:
    from vmrun.qemu.monitor import Monitor

    with Monitor.connected(paths.qmp_socket, timeout=10) as monitor:
        status = monitor.status()
    if status != "running":
        raise died_during_startup(paths) if status == "shutdown" else LaunchError(f"qemu reports {status!r}")


def _after_boot(
    spec: Spec, host: Host, paths: RunPaths, pid: int, say: Say, interrupted: threading.Event | None
) -> None:
    from vmrun.guest.agent import GuestAgent
    from vmrun.guest.hooks import run_guest_steps

    say(f"waiting for the guest agent (up to {spec.agent.timeout:g} s)")
    with GuestAgent(paths.agent_socket) as agent:
        waited = _wait_for_agent(agent, spec, host, paths, pid, interrupted)
        say(f"guest agent ready after {waited:.1f} s")
        run_guest_steps(agent, spec, say)


def _wait_for_agent(
    agent: GuestAgent, spec: Spec, host: Host, paths: RunPaths, pid: int, interrupted: threading.Event | None
) -> float:
    """The agent's own wait, in slices, so a qemu that dies meanwhile is reported as such (exit 4)."""
    started = time.monotonic()
    deadline = started + spec.agent.timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            agent.wait_ready(timeout=max(0.1, min(STARTUP_SLICE, remaining)))
            return time.monotonic() - started
        except AgentError:
            if interrupted is not None and interrupted.is_set():
                raise KeyboardInterrupt from None
            if not is_our_qemu(host, pid, spec.name):
                raise died_during_startup(paths) from None
            if time.monotonic() >= deadline:
                raise AgentError(
                    f"{spec.name}: the guest agent did not answer within {spec.agent.timeout:g} s",
                    hint=f"is qemu-ga running in the guest? the VM is still up: vmrun logs {spec.name}; "
                    f"vmrun down {spec.name}",
                ) from None


