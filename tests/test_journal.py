"""Host changes are journaled before they are made, and undone whatever instant vmrun stops at."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from vmrun.errors import PreflightError
from vmrun.preflight.apply import apply_plan, ksm_restore_value, undo_changes
from vmrun.preflight.changes import AppliedChange
from vmrun.preflight.others import Others

from .fakehost import add_tap, snapshot
from .test_preflight import GPU, GPU_AUDIO, fake_host, make_spec, nic_spec, plan_for, vfio_spec


class RecordingJournal:
    """Every journal write, and what the fake host had been told at that moment."""

    def __init__(self, host: object) -> None:
        self.host = host
        self.writes: list[tuple[list[tuple[str, bool]], int]] = []

    def record(self, entries: tuple[AppliedChange, ...]) -> None:
        seen = len(self.host.writes)  # type: ignore[attr-defined]
        self.writes.append(([(entry.change.step.path, entry.done) for entry in entries], seen))


def test_fake_sysfs_each_change_is_journaled_before_it_is_made_and_marked_done_after(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    journal = RecordingJournal(host)
    plan = plan_for(vfio_spec("03:00.0", "03:00.1"), host)
    apply_plan(plan, host, journal=journal)
    writes = [(c.step.path, c.step.value) for c in plan.changes if c.step.action == "write"]
    assert len(journal.writes) == 2 * len(plan.changes)
    for index, change in enumerate(plan.changes):
        intent, intent_seen = journal.writes[2 * index]
        done, _ = journal.writes[2 * index + 1]
        assert intent[-1] == (change.step.path, False)  # written ahead ...
        assert done[-1] == (change.step.path, True)  # ... and marked done after
        if change.step.action == "write":
            # When the intent was written, the host had not yet been told this change.
            assert intent_seen == writes.index((change.step.path, change.step.value))


def test_fake_sysfs_a_failure_midway_leaves_an_empty_journal_and_the_host_as_it_was(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO), fail_on="/sys/bus/pci/devices/0000:03:00.1/driver/unbind")
    before = snapshot(host.root)
    journal = RecordingJournal(host)
    with pytest.raises(PreflightError):
        apply_plan(plan_for(vfio_spec("03:00.0", "03:00.1"), host), host, journal=journal)
    assert journal.writes[-1][0] == []
    assert snapshot(host.root) == before


def test_fake_sysfs_an_interrupt_midway_rolls_back_the_change_in_flight_too(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    before = snapshot(host.root)
    plan = plan_for(vfio_spec("03:00.0", "03:00.1"), host)

    class InterruptingJournal(RecordingJournal):
        def record(self, entries: tuple[AppliedChange, ...]) -> None:
            super().record(entries)
            if len(entries) == 3 and entries[-1].done:
                raise KeyboardInterrupt  # Ctrl-C right after the third change

    journal = InterruptingJournal(host)
    with pytest.raises(KeyboardInterrupt):
        apply_plan(plan, host, journal=journal)
    assert journal.writes[-1][0] == []
    assert snapshot(host.root) == before


def test_fake_sysfs_an_entry_never_marked_done_whose_change_never_arrived_is_struck_quietly(tmp_path: Path) -> None:
    # vmrun died between journaling a KSM write and making it: the undo fails, but the host shows KSM as it
    # was, so there is nothing to undo.
    host = fake_host(tmp_path, fail_on="/sys/kernel/mm/ksm/run")
    [ksm] = plan_for(make_spec(host={"user": "nobody", "ksm": True}), host).changes
    assert undo_changes([AppliedChange(ksm, done=False)], host) == []


def test_fake_sysfs_an_entry_never_marked_done_whose_change_reached_the_host_keeps_a_failed_undo(
        tmp_path: Path) -> None:
    # vmrun died after creating the tap but before marking it done: the tap is there, so a failed
    # `ip tuntap del` is a failure to report and keep in the journal, not an intent to forget.
    host = fake_host(tmp_path, fail_on="ip tuntap del")
    [tap] = plan_for(nic_spec(queues=1), host).changes
    add_tap(host.root, "vmtap0", multi_queue=False)
    journal = RecordingJournal(host)
    assert undo_changes([AppliedChange(tap, done=False)], host, journal=journal) == [
        "ip tuntap del dev vmtap0 mode tap: ip: failed, as the test asked"]
    assert journal.writes[-1][0] == [("/sys/class/net/vmtap0", False)]


def test_fake_sysfs_undoing_a_tap_someone_deleted_is_done(tmp_path: Path) -> None:
    # The tap vmrun made is gone (deleted by hand): there is nothing left to delete, and down goes on.
    host = fake_host(tmp_path)
    [tap] = plan_for(nic_spec(queues=1), host).changes
    assert undo_changes([AppliedChange(tap, done=True)], host) == []


def test_fake_ksm_a_rollback_leaves_ksm_on_while_another_vm_wants_it(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    run = host.path("/sys/kernel/mm/ksm/run")
    first = apply_plan(plan_for(make_spec(host={"user": "nobody", "ksm": True}), host), host)
    others = Others(want_ksm=True, ksm_previous=ksm_restore_value(first))
    second = apply_plan(plan_for(make_spec(host={"user": "nobody", "ksm": True}), host, others=others), host)
    undo_changes(second, host, rollback=True, others=others)  # the second VM fails to start
    assert run.read_text() == "1"


def test_fake_tap_in_use_by_another_vm_is_refused(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    plan = plan_for(nic_spec(), host, others=Others(taps={"vmtap0": "db"}))
    assert [check.message for check in plan.failures] == [
        "tap vmtap0 is in use by VM db: give this NIC another tap (nics.tap)"
    ]
    assert plan.changes == ()


def test_fake_sysfs_a_journal_that_cannot_be_written_undoes_what_it_could_not_record(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    before = snapshot(host.root)

    class FullDisk(RecordingJournal):
        def record(self, entries: tuple[AppliedChange, ...]) -> None:
            if entries and entries[-1].done:  # the change was made, but marking it done fails
                raise OSError(28, "No space left on device")
            super().record(entries)

    with pytest.raises(OSError, match="No space left"):
        apply_plan(plan_for(vfio_spec("03:00.0", "03:00.1"), host), host, journal=FullDisk(host))
    assert snapshot(host.root) == before


def test_fake_sysfs_each_undone_change_leaves_the_journal_at_once(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    applied = apply_plan(plan_for(vfio_spec("03:00.0", "03:00.1"), host), host)
    journal = RecordingJournal(host)
    assert undo_changes(applied, host, journal=journal) == []
    made = [(entry.change.step.path, True) for entry in applied]
    assert [entries for entries, _ in journal.writes] == [made[:count] for count in range(len(made) - 1, -1, -1)]


class Killed(BaseException):
    """vmrun dying: nothing after it runs."""


def test_fake_sysfs_a_down_killed_midway_and_run_again_undoes_nothing_twice(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    before = snapshot(host.root)
    applied = apply_plan(plan_for(vfio_spec("03:00.0", "03:00.1"), host), host)
    made = len(host.writes)

    class DyingJournal:
        """What reached the disk before vmrun was killed, after its third journal write."""

        def __init__(self) -> None:
            self.entries: tuple[AppliedChange, ...] = applied
            self.written = 0

        def record(self, entries: tuple[AppliedChange, ...]) -> None:
            self.entries, self.written = entries, self.written + 1
            if self.written == 3:
                raise Killed

    journal = DyingJournal()
    with pytest.raises(Killed):
        undo_changes(applied, host, journal=journal)
    assert 0 < len(journal.entries) < len(applied)
    assert undo_changes(journal.entries, host) == []  # the next `down`, from the journal on disk
    undone = host.writes[made:]
    assert len(undone) == len(set(undone)), "a change was undone twice"
    assert snapshot(host.root) == before


def test_fake_what_could_not_be_undone_stays_in_the_journal(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    applied = apply_plan(plan_for(make_spec(nics=[{"id": "n0", "tap": "vmtap0"}], host={"user": "nobody",
                                                                                       "ksm": True}), host), host)
    tap, ksm = applied
    stuck = attrs.evolve(host, fail_on="ip tuntap del")
    journal = RecordingJournal(stuck)
    assert undo_changes(applied, stuck, journal=journal) == [
        "ip tuntap del dev vmtap0 mode tap: ip: failed, as the test asked"]
    assert journal.writes[-1][0] == [(tap.change.step.path, True)]
    assert stuck.read("/sys/kernel/mm/ksm/run") == "0"


def test_fake_sysfs_undos_run_again_after_a_kill_find_their_work_done(tmp_path: Path) -> None:
    # vmrun was killed after undoing but before its journal shrank: the next down undoes the same again,
    # and a device already given back, a tap gone and a /dev/vfio node gone are not failures.
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    before = snapshot(host.root)
    spec = attrs.evolve(vfio_spec("03:00.0", "03:00.1"), nics=nic_spec(queues=1).nics)
    applied = apply_plan(plan_for(spec, host), host)
    assert undo_changes(applied, host) == []
    assert undo_changes(applied, host) == []
    assert snapshot(host.root) == before
