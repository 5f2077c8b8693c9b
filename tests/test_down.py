"""`down` on a fake host: it never forgets a host change it could not undo, never treats damaged state as
no state, and says what it leaves on purpose."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import attrs
import pytest

from vmrun.errors import PreflightError, UsageError
from vmrun.preflight.apply import apply_plan
from vmrun.run.ending import down, others_than
from vmrun.run.status import status
from vmrun.state.glance import state_path
from vmrun.state.locations import Places, RunPaths
from vmrun.state.vmstate import StateJournal, VmState, journal_path, read_journal, read_state

from .fakehost import FakeHost, FakePci, put
from .test_preflight import GPU, fake_host, make_spec, plan_for

TAP = "vmtap0"


def places(tmp_path: Path) -> Places:
    return Places(run_root=tmp_path / "run", state_root=tmp_path / "state")


def started(tmp_path: Path, devices: tuple[FakePci, ...] = (), **host: object) -> tuple[FakeHost, RunPaths]:
    """A VM "fake" whose preflight made a tap (and whatever else host asks for), journaled in its state."""
    fake = fake_host(tmp_path, devices)
    paths = places(tmp_path).of("fake")
    journal = StateJournal.begin(paths, VmState(name="fake", spec_path="s", argv=(), accel="tcg", accel_reason="r"))
    spec = make_spec(nics=[{"id": "n0", "tap": TAP}], host={"user": "nobody", **host})
    apply_plan(plan_for(spec, fake), fake, journal=journal)
    return fake, paths


def test_fake_down_keeps_the_run_dir_while_an_undo_is_pending_and_a_later_down_finishes(tmp_path: Path) -> None:
    host, paths = started(tmp_path)
    stuck = attrs.evolve(host, fail_on="ip tuntap del")
    with pytest.raises(PreflightError) as raised:
        down("fake", stuck, places(tmp_path), timeout=1, force=False, say=print)
    assert str(raised.value) == "fake: could not undo: ip tuntap del dev vmtap0 mode tap: ip: failed, as the test asked"
    assert raised.value.hint is not None and "vmrun down fake tries again" in raised.value.hint
    state = read_state(paths)
    assert state is not None
    assert [entry.change.step.argv[:3] for entry in read_journal(paths, state)] == [("ip", "tuntap", "add")]
    assert host.exists(f"/sys/class/net/{TAP}")
    assert down("fake", host, places(tmp_path), timeout=1, force=False, say=print) == "already gone"
    assert not paths.run_dir.exists() and not host.exists(f"/sys/class/net/{TAP}")


def test_fake_down_force_removes_the_run_dir_and_names_what_stays_on_the_host(tmp_path: Path) -> None:
    host, paths = started(tmp_path)
    stuck = attrs.evolve(host, fail_on="ip tuntap del")
    with pytest.raises(PreflightError, match="^fake: could not undo: ip tuntap del dev vmtap0") as raised:
        down("fake", stuck, places(tmp_path), timeout=1, force=True, say=print)
    assert raised.value.exit_code == 3
    assert raised.value.hint == "--force removed its run dir anyway: these stay on the host until undone by hand"
    assert not paths.run_dir.exists()


def test_fake_a_damaged_state_file_is_named_kept_by_down_and_its_journal_undone_by_down_force(
        tmp_path: Path) -> None:
    host, paths = started(tmp_path)
    state_path(paths).write_text("{not json")
    message = f"{state_path(paths)} is not a state file vmrun wrote: what fake holds on the host is unknown"
    with pytest.raises(UsageError, match=f"^{message}$"):
        down("fake", host, places(tmp_path), timeout=1, force=False, say=print)
    assert state_path(paths).read_text() == "{not json"
    assert [vm.state for vm in status(host, places(tmp_path))] == ["damaged"]
    with pytest.raises(UsageError, match=f"^{message}$"):  # nor can another VM's up see what fake holds
        others_than(host, places(tmp_path), "other")
    said: list[str] = []
    assert down("fake", host, places(tmp_path), timeout=1, force=True, say=said.append) == "already gone"
    assert said[0] == f"{message}; --force goes on with its journal, {journal_path(paths)}"
    assert not host.exists(f"/sys/class/net/{TAP}")  # the journal, in a file of its own, still told of the tap
    assert not paths.run_dir.exists()


def test_fake_a_journal_line_cut_short_by_a_kill_is_a_change_never_made(tmp_path: Path) -> None:
    host, paths = started(tmp_path)
    with journal_path(paths).open("ab") as journal:
        journal.write(b'0badf00d {"add":7,"entry":{"action":"wr')  # written ahead of a change never made
    assert down("fake", host, places(tmp_path), timeout=1, force=False, say=print) == "already gone"
    assert not host.exists(f"/sys/class/net/{TAP}") and not paths.run_dir.exists()


def test_fake_a_journal_line_cut_short_by_a_kill_does_not_damage_the_next_line_written(tmp_path: Path) -> None:
    host, paths = started(tmp_path, ksm=True)
    with journal_path(paths).open("ab") as journal:
        journal.write(b'0badf00d {"add":7,"entry":{"action":"wr')
    stuck = attrs.evolve(host, fail_on="ip tuntap del")
    with pytest.raises(PreflightError, match="could not undo: ip tuntap del"):
        down("fake", stuck, places(tmp_path), timeout=1, force=False, say=print)
    state = read_state(paths)
    assert state is not None and [entry.change.step.path for entry in read_journal(paths, state)] == [
        f"/sys/class/net/{TAP}"]


def as_an_older_vmrun_left_it(paths: RunPaths) -> None:
    """The journal moved into the state file, where vmrun kept it before it had a file of its own."""
    state = read_state(paths)
    assert state is not None
    entries = tuple(entry.to_json() for entry in read_journal(paths, state))
    state_path(paths).write_text(attrs.evolve(state, changes=entries).to_json())
    journal_path(paths).unlink()


def test_fake_down_undoes_the_journal_an_older_vmrun_kept_in_the_state_file(tmp_path: Path) -> None:
    host, paths = started(tmp_path, ksm=True)
    as_an_older_vmrun_left_it(paths)
    stuck = attrs.evolve(host, fail_on="ip tuntap del")
    with pytest.raises(PreflightError, match="could not undo: ip tuntap del"):
        down("fake", stuck, places(tmp_path), timeout=1, force=False, say=print)
    assert host.read("/sys/kernel/mm/ksm/run") == "0"
    assert down("fake", host, places(tmp_path), timeout=1, force=False, say=print) == "already gone"
    assert not host.exists(f"/sys/class/net/{TAP}") and not paths.run_dir.exists()


def test_fake_down_force_undoes_what_a_damaged_journal_still_tells(tmp_path: Path) -> None:
    host, paths = started(tmp_path, ksm=True)
    as_an_older_vmrun_left_it(paths)
    data = json.loads(state_path(paths).read_text())
    del data["accel"]
    data["changes"][1] = {"action": "write"}  # KSM's entry, torn
    state_path(paths).write_text(json.dumps(data))
    with pytest.raises(PreflightError, match="could not undo: the unreadable rest of the journal"):
        down("fake", host, places(tmp_path), timeout=1, force=True, say=print)
    assert not host.exists(f"/sys/class/net/{TAP}")
    assert not paths.run_dir.exists()


@attrs.frozen
class ProcessHost(FakeHost):
    """A fake host whose processes end when signalled."""

    def signal(self, pid: int, number: int) -> None:
        shutil.rmtree(self.path(f"/proc/{pid}"), ignore_errors=True)


def test_fake_proc_with_state_and_journal_damaged_down_force_names_what_qemu_held_and_how_to_remove_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vmrun.qemu.process.KILL_WAIT", 0.05)
    fake, paths = started(tmp_path, devices=(attrs.evolve(GPU, driver="vfio-pci"),))
    host = ProcessHost(root=fake.root)
    fake_process(host, 4242, "qemu", "-name", "guest=fake,process=vmrun-fake", "-pidfile", str(paths.pidfile),
                 "-netdev", f"tap,id=n0,ifname={TAP},script=no", "-device", "vfio-pci,host=0000:03:00.0,id=d")
    os.chown(host.path("/dev/vfio/15"), 65534, 65534)  # given to qemu's user, as preflight does
    lines = journal_path(paths).read_bytes().split(b"\n")
    journal_path(paths).write_bytes(b"\n".join([lines[0], lines[1].replace(b"tuntap", b"tunTAP"), *lines[2:]]))
    with pytest.raises(UsageError, match=f"^{journal_path(paths)} has 1 damaged line"):
        down("fake", host, places(tmp_path), timeout=1, force=False, say=print)
    state_path(paths).write_text("{not json")
    with pytest.raises(PreflightError) as raised:
        down("fake", host, places(tmp_path), timeout=1, force=True, say=print)
    assert str(raised.value) == (f"fake: could not undo: the 1 damaged line(s) of {journal_path(paths)}; "
                                 f"tap {TAP} (ip tuntap del dev {TAP} mode tap); 0000:03:00.0 bound to vfio-pci "
                                 "(echo 0000:03:00.0 > /sys/bus/pci/drivers/vfio-pci/unbind; echo > "
                                 "/sys/bus/pci/devices/0000:03:00.0/driver_override; echo 0000:03:00.0 > "
                                 "/sys/bus/pci/drivers_probe); /dev/vfio/15 owned by 65534:65534 "
                                 "(chown 0:0 /dev/vfio/15, or unbind as above)")
    assert not host.exists("/proc/4242") and not paths.run_dir.exists()
    assert host.exists(f"/sys/class/net/{TAP}")  # vmrun cannot tell it made it: named, not deleted


def test_fake_down_says_what_it_keeps_on_purpose(tmp_path: Path) -> None:
    host, paths = started(tmp_path)
    disk = tmp_path / "new" / "disk.raw"
    spec = make_spec(disks=[{"id": "d", "path": str(disk), "format": "raw", "size": "1M"}], host={"user": "nobody"})
    journal = StateJournal(paths, read_state(paths))  # type: ignore[arg-type]
    journal.record((*journal.state.journal(), *apply_plan(plan_for(spec, host), host)))
    paths.make_state_dir()
    paths.cloud_init_seed.write_text("seed")
    said: list[str] = []
    assert down("fake", host, places(tmp_path), timeout=1, force=False, say=said.append) == "already gone"
    assert said == [
        "kept on purpose, as down keeps disk images, their directories and system users "
        f"(by hand: remove {disk}; rmdir {disk.parent})",
        f"kept for the next up: {paths.cloud_init_seed}",
    ]
    assert disk.exists() and not paths.run_dir.exists()


def fake_process(host: FakeHost, pid: int, *argv: str) -> None:
    put(host.root, f"/proc/{pid}/cmdline", "\0".join(argv) + "\0")
    put(host.root, f"/proc/{pid}/stat", f"{pid} (qemu-system-x86) S 1")


def test_fake_proc_a_qemu_whose_pid_vmrun_never_read_is_found_by_its_command_line(tmp_path: Path) -> None:
    from vmrun.qemu.process import find_qemu

    host = fake_host(tmp_path)
    paths = places(tmp_path).of("web")
    name = "guest=web,process=vmrun-web"
    fake_process(host, 41, "qemu", "-name", name, "-pidfile", "/elsewhere/web/qemu.pid")  # another run root's web
    fake_process(host, 42, "qemu", "-name", "guest=db,process=vmrun-db", "-pidfile", str(paths.pidfile))
    assert find_qemu(host, paths, "web") is None
    fake_process(host, 43, "qemu", "-name", name, "-pidfile", str(paths.pidfile))
    assert find_qemu(host, paths, "web") == 43


def test_fake_another_vms_damaged_state_stops_no_down_and_keeps_ksm_on(tmp_path: Path) -> None:
    host, paths = started(tmp_path, ksm=True)
    other = places(tmp_path).of("other")
    other.run_dir.mkdir()
    state_path(other).write_text("{not json")  # it may want KSM: no one can tell; nor has it a journal to take
    said: list[str] = []
    assert down("fake", host, places(tmp_path), timeout=1, force=False, say=said.append) == "already gone"
    assert not paths.run_dir.exists() and not host.exists(f"/sys/class/net/{TAP}")
    assert host.read("/sys/kernel/mm/ksm/run") == "1"
    assert "KSM stays on for other: once it is down, echo 0 > /sys/kernel/mm/ksm/run restores it" in said


def test_fake_a_vm_keeping_ksm_on_for_another_hands_it_the_value_to_restore(tmp_path: Path) -> None:
    host, paths = started(tmp_path, ksm=True)
    other = places(tmp_path).of("other")
    StateJournal.begin(other, VmState(name="other", spec_path="s", argv=(), accel="tcg", accel_reason="r"))
    state_path(other).write_text("{not json")  # it may want KSM: fake's down leaves KSM on for it
    assert down("fake", host, places(tmp_path), timeout=1, force=False, say=print) == "already gone"
    assert host.read("/sys/kernel/mm/ksm/run") == "1"
    assert down("other", host, places(tmp_path), timeout=1, force=True, say=print) == "already gone"
    assert host.read("/sys/kernel/mm/ksm/run") == "0"  # the last VM down restored what fake found


def test_fake_standalone_preflight_counts_the_changes_its_journal_holds(tmp_path: Path) -> None:
    from vmrun.run.lifecycle import prepare

    host = fake_host(tmp_path)
    spec = make_spec(nics=[{"id": "n0", "tap": TAP}], host={"user": "nobody", "ksm": True})
    applied = prepare(spec, tmp_path / "fake.toml", host, places(tmp_path), show=lambda plan: None, say=print)
    assert [entry.change.step.path for entry in applied] == [f"/sys/class/net/{TAP}", "/sys/kernel/mm/ksm/run"]
    assert down("fake", host, places(tmp_path), timeout=1, force=False, say=print) == "already gone"
    assert not host.exists(f"/sys/class/net/{TAP}") and host.read("/sys/kernel/mm/ksm/run") == "0"
