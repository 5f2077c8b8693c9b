"""Applying a preflight plan and undoing it: each host change journaled before it is made and marked done
after, rolled back newest first on any failure or interruption, undone by `down` from the VM's journal.

    applied = apply_plan(plan, host, journal=journal)       # PreflightError (exit 3) on refusal or failure
    undo_changes(applied, host, others=...)                 # `down`, from the VM's journal
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import attrs

from vmrun.crashpoints import crash_point
from vmrun.errors import PreflightError
from vmrun.host.system import Host, HostCommandError
from vmrun.preflight.changes import (
    Action,
    AppliedChange,
    Change,
    OnDown,
    Step,
    perform,
)
from vmrun.preflight.others import NO_OTHERS, Others
from vmrun.preflight.plan import Plan, refuse
from vmrun.signals import shielded


def ksm_restore_value(applied: Iterable[AppliedChange]) -> str | None:
    """The KSM run value a VM's changes restore on `down`: pass it on to the next VM as Others.ksm_previous."""
    return next((a.change.undo[0].value for a in applied if a.change.on_down is OnDown.SHARED_KSM), None)


def hugepages_held(applied: Iterable[AppliedChange]) -> dict[str, int]:
    """The huge pages a VM's changes added, per pool (its nr_hugepages path): they stay until its down."""
    held: dict[str, int] = {}
    for record in applied:
        if record.change.on_down is OnDown.SHARED_HUGEPAGES:
            held[record.change.step.path] = held.get(record.change.step.path, 0) + record.change.pages
    return held


def _reason(exc: OSError | HostCommandError) -> str:
    # An OSError's str() names the file under --host-root; the step already names the host path.
    return (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)


class Journal(Protocol):
    """Where apply_plan writes ahead: each change is recorded before it is made and marked done after."""

    def record(self, entries: tuple[AppliedChange, ...]) -> None: ...


def apply_plan(plan: Plan, host: Host, *, journal: Journal | None = None) -> tuple[AppliedChange, ...]:
    """Every change in order, each journaled before it is made; on any failure or interruption the
    changes made so far are undone, newest first, and leave the journal; what could not be undone stays."""
    refuse(plan)
    entries: list[AppliedChange] = []

    def write_ahead() -> None:
        if journal is not None:
            journal.record(tuple(entries))

    def roll_back() -> list[str]:
        with shielded():
            problems = undo_changes(entries, host, rollback=True, others=plan.others, journal=journal)
            if not problems:  # what failed stays in the journal, for `down` to try again
                entries.clear()
                write_ahead()  # also strikes the intent of a change the host refused
        return problems

    try:
        for change in plan.changes:
            entries.append(AppliedChange(change, done=False))
            write_ahead()
            crash_point(f"before {change.step}")
            try:
                perform(change.step, host)
            except (OSError, HostCommandError) as exc:
                entries.pop()  # the host refused this change, so there is nothing of it to undo
                earlier = len(entries)
                problems = roll_back()
                rolled_back = "rolled back" if not problems else f"rollback incomplete: {'; '.join(problems)}"
                raise PreflightError(
                    f"preflight: {change.step} failed: {_reason(exc)}",
                    hint=f"{earlier} earlier change(s) {rolled_back}",
                ) from exc
            entries[-1] = AppliedChange(change)
            write_ahead()
            crash_point(f"after {change.step}")
    except PreflightError:
        raise
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or the journal could not be written: the change in flight may or
        # may not have happened, so it is undone with the rest.
        roll_back()
        raise
    return tuple(entries)


def undo_changes(
    applied: Iterable[AppliedChange], host: Host, *, rollback: bool = False, others: Others = NO_OTHERS,
    journal: Journal | None = None,
) -> list[str]:
    """Undo newest first, going on past failures; returns what could not be undone.

    `down` keeps disk images and system users; KSM stays on while others.want_ksm, even in a rollback;
    a rollback (a failed preflight or launch) undoes everything else it just did. A journal entry never
    marked done is undone too; its failed undo is quiet only where the host shows the change never
    arrived. Each change leaves the journal once undone (or kept), so a vmrun killed midway undoes
    nothing twice; what could not be undone stays in it for a later `down` to try again.
    """
    pending = list(applied)
    failed: list[AppliedChange] = []
    problems = []
    while pending:
        record = pending.pop()
        problem = _undo(record, host, rollback=rollback, others=others)
        if problem is not None:
            problems.append(problem)
            failed.insert(0, record)
        if journal is not None:
            try:
                journal.record((*pending, *failed))
            except OSError:
                pass  # the host comes first: a journal that cannot shrink makes a later down try these again
    return problems


def _undo(record: AppliedChange, host: Host, *, rollback: bool, others: Others) -> str | None:
    change = record.change
    if change.on_down is OnDown.SHARED_KSM and others.want_ksm:
        return None
    if change.on_down is OnDown.KEEP and not rollback:
        return None
    crash_point(f"before undoing {change.step}")
    for step in _undo_steps(change, others):
        if _moot(step, host):
            continue
        try:
            perform(step, host)
        except (OSError, HostCommandError) as exc:
            # The change's later steps build on this one. An entry never marked done is struck only when
            # the host shows that its change never arrived: vmrun may have died just after making it.
            if record.done or _reached(change.step, host):
                return f"{step}: {_reason(exc)}"
            return None
    crash_point(f"after undoing {change.step}")
    return None


def _undo_steps(change: Change, others: Others) -> tuple[Step, ...]:
    """A pool goes back to its size without vmrun's pages plus what the other VMs still hold: the same
    absolute value however often it runs, so a down killed midway and run again shrinks nothing twice."""
    if change.on_down is not OnDown.SHARED_HUGEPAGES:
        return change.undo
    return tuple(attrs.evolve(step, value=str(int(step.value) + others.hugepages.get(step.path, 0)))
                 for step in change.undo)


PCI_DRIVERS = "/sys/bus/pci/drivers/"


def _moot(step: Step, host: Host) -> bool:
    """An undo whose end is already reached: a vmrun killed between an undo and its journal entry's removal
    runs it again, and someone may have done it by hand. The kernel refuses to unbind a device from a
    driver that does not hold it, to delete a link that is gone, to chown a /dev/vfio node that left
    with its group's last vfio-pci device; each of those means the host is already as the undo wants it."""
    if step.action is Action.RUN:
        return step.path.startswith("/sys/class/net/") and not host.exists(step.path)
    if step.action is Action.WRITE and step.path.startswith(PCI_DRIVERS) and step.path.endswith("/unbind"):
        driver = step.path.removeprefix(PCI_DRIVERS).removesuffix("/unbind")
        return host.link_name(f"/sys/bus/pci/devices/{step.value}/driver") != driver
    if step.action in (Action.CHOWN, Action.REMOVE, Action.RMDIR):
        return not host.exists(step.path)
    return False


def _reached(step: Step, host: Host) -> bool:
    """Whether the host shows a change's own step made; True when it cannot tell, so that a failed undo
    is reported rather than forgotten."""
    if step.action is Action.RUN:
        if step.path.startswith("/sys/class/net/") or step.argv[:1] == ("qemu-img",):
            return host.exists(step.path)
        if step.argv[:1] == ("useradd",):
            return host.user(step.argv[-1]) is not None
        return True
    if step.action is Action.MKDIR:
        return host.exists(step.path)
    if step.action is Action.WRITE and not step.path.startswith(PCI_DRIVERS) and "/driver/" not in step.path \
            and not step.path.endswith("/drivers_probe"):
        return host.read(step.path) == step.value.strip()  # a sysfs attribute reads back what was written
    return True


def kept_on_down(applied: Iterable[AppliedChange]) -> list[Change]:
    """What `down` leaves on purpose (disk images, the directories made for them, system users), newest
    first, as they would be undone."""
    return [record.change for record in reversed(list(applied)) if record.change.on_down is OnDown.KEEP]
