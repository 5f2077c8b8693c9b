"""The pipeline behind `up`, `preflight` and `down`: preflight -> render -> launch -> agent -> hooks."""

from __future__ import annotations

import enum
import itertools
import os
import shlex
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import attrs

from vmrun.crashpoints import crash_point
from vmrun.errors import AgentError, ConfigurationDiffers, LaunchError, PreflightError, UsageError
from vmrun.files import open_to_read, partial_of, write_whole
from vmrun.guest.cloudinit import Seed, make_seed, prepare_seed
from vmrun.host.facts import HostFacts, gather_facts
from vmrun.host.ports import bind_error, free_port
from vmrun.host.system import Host, format_cpu_list
from vmrun.preflight.apply import apply_plan, hugepages_held, kept_on_down, ksm_restore_value, undo_changes
from vmrun.preflight.changes import OnDown
from vmrun.preflight.network import IFF_MULTI_QUEUE
from vmrun.preflight.others import Others
from vmrun.preflight.plan import AppliedChange, Plan, Status, plan_preflight, refuse
from vmrun.progress import Say
from vmrun.qemu.process import (
    KILL_WAIT,
    died_during_startup,
    find_qemu,
    import_in_background,
    is_our_qemu,
    launch,
    load_launcher,
    read_pid,
    stop,
    wait_for_exit,
)
from vmrun.qemu.render import render
from vmrun.record import Record
from vmrun.signals import shielded, sigterm_interrupts
from vmrun.spec.images import url_bases, with_cached_bases
from vmrun.spec.load import converter
from vmrun.spec.model import Firmware, Nic, Spec
from vmrun.spec.usernet import AUTO_PORT, Forward, forwards, is_user, refused_forward, tap_nics, with_host_ports
from vmrun.state.drift import Configuration, differences
from vmrun.state.glance import MIGRATED, DamagedState, has_run, state_path, vm_names
from vmrun.state.hostdrift import host_differences
from vmrun.state.locations import Places, RunPaths
from vmrun.state.locks import host_lock, vm_busy, vm_lock
from vmrun.state.vmstate import (
    DamagedJournal,
    PortForward,
    StateJournal,
    VmState,
    journal_path,
    read_state,
    recorded_configuration,
    remove_run_dir,
    salvage_state,
)

if TYPE_CHECKING:
    from vmrun.guest.agent import GuestAgent

STARTUP_SLICE = 2.0  # `up` checks qemu is still alive (and not interrupted) this often while waiting for the agent


def clear_dead_run(host: Host, places: Places, name: str, say: Say) -> None:
    """Under the VM's lock: what an earlier run or preflight left (qemu died, vmrun was killed) is undone."""
    paths = places.of(name)
    if not has_run(paths):
        return
    state = read_state(paths)
    pid = find_qemu(host, paths, name)
    if pid is not None:
        raise UsageError(f"{name} is already running (pid {pid})", hint=f"vmrun down {name}")
    what = "an earlier `vmrun preflight`" if state is not None and not state.argv else "a run that died"
    say(f"{name}: cleaning up after {what} ({paths.run_dir})")
    _end_run(host, places, name, state, say)


def _is_live(host: Host, places: Places, name: str, paths: RunPaths) -> bool:
    """Its qemu runs, or another vmrun is starting or preparing it right now."""
    return is_our_qemu(host, read_pid(paths), name) or vm_busy(places, name)


def others_than(host: Host, places: Places, name: str, *, planning: bool = True) -> Others:
    """What the other vmrun VMs hold. Call it under the host lock, so that none changes meanwhile.

    Disks and the wish for KSM count while a VM is live; its taps, its VFIO devices, its huge pages and its
    duty to restore KSM count as long as its state file exists, because they stay on the host until its
    `down` undoes them.
    What a VM with a damaged state file holds is unknown: planning around it is refused (DamagedState),
    and undoing goes on as if it wanted KSM, which then stays on.
    """
    disks: set[str] = set()
    taps: dict[str, str] = {}
    vfio: dict[str, str] = {}
    keepers: list[str] = []
    ksm_previous: str | None = None
    hugepages: dict[str, int] = {}
    for other in vm_names(places.run_root):
        paths = places.of(other)
        try:
            state = read_state(paths) if other != name else None
        except DamagedState:
            if planning:
                raise
            keepers.append(other)
            continue
        if state is None:
            continue
        taps.update((tap, other) for tap in state.taps)
        vfio.update((address, other) for address in state.vfio)
        # Whoever turned KSM on knows the value to restore; the last VM down must inherit it.
        journal = StateJournal.open(paths, state).entries
        ksm_previous = ksm_previous or ksm_restore_value(journal)
        for pool, pages in hugepages_held(journal).items():
            hugepages[pool] = hugepages.get(pool, 0) + pages
        if _is_live(host, places, other, paths):
            disks.update(state.writable_disks)
            if state.wants_ksm:
                keepers.append(other)
    return Others(writable_disks=frozenset(disks), taps=taps, vfio=vfio, want_ksm=bool(keepers),
                  ksm_previous=ksm_previous, ksm_keepers=tuple(keepers), hugepages=hugepages)


def _hand_over_ksm(entries: list[AppliedChange], places: Places, others: Others, say: Say) -> None:
    """KSM stays on for others: the value to restore goes to the journal of one that keeps it on, before
    this VM's undo strikes it from its own, so the last VM down restores it."""
    duty = next((entry for entry in entries if entry.change.on_down is OnDown.SHARED_KSM), None)
    if duty is None or not others.want_ksm:
        return
    for keeper in others.ksm_keepers:
        journal = _journal_to_take(places.of(keeper))
        if journal is None:
            continue
        if not any(entry.change.on_down is OnDown.SHARED_KSM for entry in journal.entries):
            journal.record((*journal.entries, duty))
        return
    restore = shlex.join(["echo", duty.change.undo[0].value]) + f" > {duty.change.undo[0].path}"
    say(f"KSM stays on for {', '.join(others.ksm_keepers)}: once it is down, {restore} restores it")


def _journal_to_take(paths: RunPaths) -> StateJournal | None:
    """A VM's journal, when it can take an entry: a damaged state file has its journal beside it, unless an
    older vmrun kept the journal inside."""
    try:
        state = read_state(paths)
    except DamagedState:
        state = salvage_state(paths)[0] if journal_path(paths).exists() else None
    return StateJournal.open(paths, state) if state is not None else None


def _end_run(
    host: Host, places: Places, name: str, state: VmState | None, say: Say, *, rollback: bool = False,
    force: bool = False, lost: tuple[str, ...] = (), held: Held | None = None,
) -> None:
    """The last of any run (down, a failed up, a dead run's clean-up): its journal of host changes undone,
    newest first, under the host lock and past any signal, then its run dir removed. A change that could
    not be undone stays in the journal and keeps the run dir, for `down` to try again, unless force.
    lost: what is beyond undoing from the start (the unreadable part of a damaged journal); held: what its
    qemu held, read from its command line, named if still on the host afterwards."""
    paths = places.of(name)
    with host_lock(places), shielded():
        journal = StateJournal.open(paths, state) if state is not None else None
        if journal is not None and journal.lost and not force:
            raise DamagedJournal(paths, journal.lost)
        entries = list(journal.entries) if journal is not None else []
        if not rollback:
            _say_left_on_purpose(entries, paths, say)
        problems = list(lost)
        if entries or held is not None:
            others = others_than(host, places, name, planning=False)
            _hand_over_ksm(entries, places, others, say)
            problems += undo_changes(entries, host, rollback=rollback, others=others, journal=journal)
            if held is not None:
                problems += held.still_on(host, others)
        if problems and not force:
            kept_in = f"{paths.run_dir} keeps them in its journal"
            if not rollback:
                raise _could_not_undo(name, problems, f"{kept_in}: once the cause is fixed, vmrun down {name} tries "
                                                      f"again (vmrun down --force {name} forgets them)")
            for problem in problems:
                say(f"could not undo: {problem}")
            say(f"{kept_in}: vmrun down {name} tries again")
            return
        for target in (paths.uefi_vars, paths.cloud_init_seed):  # what a killed `up` was writing
            partial_of(target).unlink(missing_ok=True)
        _keep_console_log(paths, say)
        remove_run_dir(paths)
    if problems:
        raise _could_not_undo(name, problems, "--force removed its run dir anyway: these stay on the host until "
                                              "undone by hand")


def _keep_console_log(paths: RunPaths, say: Say) -> None:
    """The run's console log outlives its run dir, for `vmrun logs` after a down or a failed up: what the
    guest said last is what one wants to read then. Keeping it never fails the down."""
    try:
        # Not followed: qemu's user may write in the run dir, and root copies this file.
        log = open_to_read(paths.console_log, follow_links=False)
    except OSError:
        return  # no qemu ran, or it wrote no log
    try:
        with log:
            if not stat.S_ISREG(os.fstat(log.fileno()).st_mode):
                return
            paths.make_state_dir()
            write_whole(paths.last_console_log, lambda partial: _copy_to(log, partial))
    except OSError as exc:
        say(f"could not keep the console log in {paths.last_console_log}: {exc.strerror}")


def _copy_to(source: BinaryIO, target: Path) -> None:
    with target.open("wb") as copy:
        shutil.copyfileobj(source, copy)


def _could_not_undo(name: str, problems: list[str], hint: str) -> PreflightError:
    return PreflightError(f"{name}: could not undo: {'; '.join(problems)}", hint=hint)


def _say_left_on_purpose(journal: list[AppliedChange], paths: RunPaths, say: Say) -> None:
    kept = kept_on_down(journal)
    if kept:
        undo = "; ".join(str(step) for change in kept for step in change.undo)
        say(f"kept on purpose, as down keeps disk images, their directories and system users (by hand: {undo})")
    files = [str(path) for path in (paths.uefi_vars, paths.cloud_init_seed) if path.exists()]
    if files:
        say(f"kept for the next up: {', '.join(files)}")


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
        if running is not None and running.migration == MIGRATED:
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
    spec: Spec, spec_path: Path, facts: HostFacts, paths: RunPaths
) -> tuple[Configuration, Seed | None]:
    """What the VM would run with now, and the seed that says so (built from the user's files as they are)."""
    seed = make_seed(spec, str(spec_path)) if spec.cloud_init is not None else None
    argv = tuple(render(spec, facts, paths))
    return Configuration(spec, argv, seed.instance_id if seed else None), seed


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


def running_state(host: Host, paths: RunPaths, name: str) -> VmState | None:
    state = read_state(paths)
    return state if state is not None and state.argv and is_our_qemu(host, read_pid(paths), name) else None


def abort_start(host: Host, places: Places, state: VmState, say: Say) -> None:
    """A failed or interrupted `up`: qemu killed if it runs (found even when its pid was never read),
    host changes undone, run dir removed."""
    # Each process of the run: stopped while it daemonized, qemu is a parent and its daemon child.
    while (pid := find_qemu(host, places.of(state.name), state.name)) is not None:
        host.signal(pid, signal.SIGKILL)
        if not wait_for_exit(host, pid, state.name, KILL_WAIT):
            say(f"qemu (pid {pid}) survived SIGKILL; its host changes stay: vmrun down --force {state.name}")
            return
    _end_run(host, places, state.name, state, say, rollback=True)


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

    with Monitor(paths.qmp_socket) as monitor:
        monitor.connect(timeout=10)
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


def down(name: str, host: Host, places: Places, *, timeout: float, force: bool, say: Say) -> str | None:
    """Stop the VM, wait until its qemu is gone, undo its host changes; None when there was nothing."""
    paths = places.of(name)
    with vm_lock(places, name, wait=True, say=say):
        if not has_run(paths):
            return None
        return stop_and_undo(host, places, name, timeout=timeout, force=force, say=say)


def stop_and_undo(host: Host, places: Places, name: str, *, timeout: float, force: bool, say: Say) -> str:
    """Under the VM's lock: qemu stopped and gone, host changes undone, run dir removed."""
    paths = places.of(name)
    state, lost = _state_to_end(paths, force=force, say=say)
    # Read before qemu stops: once the journal is not all known, qemu's command line is the last witness.
    held = _held_by_qemu(host, paths, name) if lost else None
    crash_point(f"before stopping {name}")
    how = stop(host, paths, name, timeout=timeout, force=force, say=say)
    crash_point(f"after stopping {name}")
    _end_run(host, places, name, state, say, force=force, lost=lost, held=held)
    return how


def _state_to_end(paths: RunPaths, *, force: bool, say: Say) -> tuple[VmState | None, tuple[str, ...]]:
    """The state `down` ends the run with; with force, what a damaged one and its journal still tell, and
    what is lost."""
    try:
        state = read_state(paths)
    except DamagedState as damage:
        if not force:
            raise
        state, whole = salvage_state(paths)
        if journal_path(paths).exists():
            say(f"{damage}; --force goes on with its journal, {journal_path(paths)}")
        else:
            say(f"{damage}; --force goes on with the {len(state.changes)} journal entries that still read whole")
            if not whole:
                return state, (f"the unreadable rest of the journal in {state_path(paths)}",)
    if state is None:
        return None, ()
    journal = StateJournal.open(paths, state)
    if not journal.lost:
        return state, ()
    damaged = DamagedJournal(paths, journal.lost)
    if not force:
        raise damaged
    say(f"{damaged}; --force goes on with the entries that still read whole")
    return state, (f"the {journal.lost} damaged line(s) of {journal_path(paths)}",)


@attrs.frozen(repr=False)
class Held(Record):
    """What a qemu holds on the host by its command line: its taps (ifname=) and VFIO functions (host=)."""

    taps: tuple[str, ...] = ()
    vfio: tuple[str, ...] = ()

    def still_on(self, host: Host, others: Others) -> list[str]:
        """What stays on the host for this VM, named with the command that removes it."""
        stays = []
        for tap in self.taps:
            if host.exists(f"/sys/class/net/{tap}") and tap not in others.taps:
                flags = int(host.read(f"/sys/class/net/{tap}/tun_flags") or "0", 16)
                multi_queue = " multi_queue" if flags & IFF_MULTI_QUEUE else ""
                stays.append(f"tap {tap} (ip tuntap del dev {tap} mode tap{multi_queue})")
        nodes = set()
        for address in self.vfio:
            device = f"/sys/bus/pci/devices/{address}"
            if host.link_name(f"{device}/driver") == "vfio-pci" and address not in others.vfio:
                stays.append(f"{address} bound to vfio-pci (echo {address} > /sys/bus/pci/drivers/vfio-pci/unbind; "
                             f"echo > {device}/driver_override; echo {address} > /sys/bus/pci/drivers_probe)")
                nodes.add(f"/dev/vfio/{host.link_name(f'{device}/iommu_group')}")
        for node in sorted(nodes):  # preflight gave the group's node to qemu's user; it goes with the binding
            if host.exists(node) and host.ownership(node) != "0:0":
                stays.append(f"{node} owned by {host.ownership(node)} (chown 0:0 {node}, or unbind as above)")
        return stays


def _held_by_qemu(host: Host, paths: RunPaths, name: str) -> Held:
    pid = find_qemu(host, paths, name)
    argv = (host.process_argv(pid) if pid is not None else None) or []
    options = [dict(_qemu_options(value)) for option, value in itertools.pairwise(argv)
               if option in ("-netdev", "-device")]
    return Held(
        taps=tuple(opts["ifname"] for opts in options if opts.get("") == "tap" and "ifname" in opts),
        vfio=tuple(opts["host"] for opts in options if opts.get("") == "vfio-pci" and "host" in opts),
    )


def _qemu_options(value: str) -> Iterator[tuple[str, str]]:
    """key=value pairs of a qemu option (",," is a comma in a value); its first word, a driver, under ""."""
    for index, part in enumerate(value.replace(",,", "\0").split(",")):
        key, equals, rest = part.partition("=")
        if equals:
            yield key, rest.replace("\0", ",")
        elif index == 0:
            yield "", key

