"""The end of a run, however it comes: `down`, a failed `up` rolled back, a dead run cleaned up. Its journal
of host changes is undone newest first, under the host lock and past any signal, and what other VMs still
hold is left to them.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import attrs

from vmrun.crashpoints import crash_point
from vmrun.errors import PreflightError, UsageError
from vmrun.files import open_to_read, partial_of, write_whole
from vmrun.host.system import Host
from vmrun.preflight.apply import hugepages_held, kept_on_down, ksm_restore_value, undo_changes
from vmrun.preflight.changes import OnDown
from vmrun.preflight.network import IFF_MULTI_QUEUE
from vmrun.preflight.others import Others
from vmrun.preflight.plan import AppliedChange
from vmrun.progress import Say
from vmrun.qemu.process import KILL_WAIT, find_qemu, is_our_qemu, read_pid, stop, wait_for_exit
from vmrun.record import Record
from vmrun.signals import shielded
from vmrun.state.glance import DamagedState, has_run, state_path, vm_names
from vmrun.state.locations import Places, RunPaths
from vmrun.state.locks import host_lock, vm_busy, vm_lock
from vmrun.state.vmstate import (
    DamagedJournal,
    StateJournal,
    VmState,
    journal_path,
    read_state,
    remove_run_dir,
    salvage_state,
)

if TYPE_CHECKING:
    pass


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
