"""`down` on a fake host: it never forgets a host change it could not undo, never treats damaged state as
no state, and says what it leaves on purpose."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from vmrun.errors import PreflightError, UsageError
from vmrun.preflight.apply import apply_plan
from vmrun.run.lifecycle import down, others_than
from vmrun.run.status import status
from vmrun.state.glance import state_path
from vmrun.state.locations import Places, RunPaths
from vmrun.state.vmstate import StateJournal, VmState, read_state

from .fakehost import FakeHost, put
from .test_preflight import fake_host, make_spec, plan_for

TAP = "vmtap0"


def places(tmp_path: Path) -> Places:
    return Places(run_root=tmp_path / "run", state_root=tmp_path / "state")


def started(tmp_path: Path, **host: object) -> tuple[FakeHost, RunPaths]:
    """A VM "fake" whose preflight made a tap (and whatever else host asks for), journaled in its state."""
    fake = fake_host(tmp_path)
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
    assert state is not None and [entry.change.step.argv[:3] for entry in state.journal()] == [("ip", "tuntap", "add")]
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


def test_fake_a_damaged_state_file_is_named_kept_by_down_and_shown_by_status(tmp_path: Path) -> None:
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
    lost = f"could not undo: the unreadable rest of the journal in {state_path(paths)}"
    with pytest.raises(PreflightError, match=lost):
        down("fake", host, places(tmp_path), timeout=1, force=True, say=said.append)
    assert said[0] == f"{message}; --force goes on with the 0 journal entries that still read whole"
    assert not paths.run_dir.exists()


def test_fake_down_force_undoes_what_a_damaged_journal_still_tells(tmp_path: Path) -> None:
    host, paths = started(tmp_path, ksm=True)
    data = json.loads(state_path(paths).read_text())
    del data["accel"]
    data["changes"][1] = {"action": "write"}  # KSM's entry, torn
    state_path(paths).write_text(json.dumps(data))
    with pytest.raises(PreflightError, match="could not undo: the unreadable rest of the journal"):
        down("fake", host, places(tmp_path), timeout=1, force=True, say=print)
    assert not host.exists(f"/sys/class/net/{TAP}")
    assert not paths.run_dir.exists()


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
    state_path(other).write_text("{not json")  # it may want KSM: no one can tell
    assert down("fake", host, places(tmp_path), timeout=1, force=False, say=print) == "already gone"
    assert not paths.run_dir.exists() and not host.exists(f"/sys/class/net/{TAP}")
    assert host.read("/sys/kernel/mm/ksm/run") == "1"
