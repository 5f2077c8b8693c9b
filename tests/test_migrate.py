"""`vmrun migrate` before anything moves: what cannot move is refused before the destination is reached."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import attrs
import pytest

from vmrun.cli.main import main
from vmrun.errors import LaunchError, UsageError
from vmrun.progress import Meter
from vmrun.qemu.migration import Copying, MigrationMonitor, Mirror
from vmrun.run.migrate import _present, _wait, abort
from vmrun.run.status import status
from vmrun.spec.load import converter
from vmrun.state.leftdisks import record_left
from vmrun.state.locations import Places
from vmrun.state.vmstate import StateJournal, VmState

from .fakehost import FakeHost
from .fakepeer import HANG_UP, QMP_GREETING, FakePeer, Message, Script, answer
from .test_down import fake_process
from .test_preflight import fake_host, make_spec


def recorded(tmp_path: Path, **sections: object) -> list[str]:
    """A VM "fake" whose state records the spec it was started from, and the migrate command line for it,
    with a remote shell that leaves a mark if it is ever run."""
    places = Places(run_root=tmp_path / "run", state_root=tmp_path / "state")
    spec = make_spec(**sections)
    StateJournal.begin(places.of("fake"), VmState(name="fake", spec_path="s", argv=("qemu",), accel="kvm",
                                                  accel_reason="r", spec=converter.unstructure(spec)))
    return ["--run-dir", str(places.run_root), "--state-dir", str(places.state_root), "migrate", "fake",
            "--to", "elsewhere", "-e", f"touch {tmp_path / 'remote-shell-ran'}"]


@pytest.mark.parametrize(("sections", "field"), [
    ({"vfio": [{"id": "gpu", "host": "01:00.0"}]}, "vfio[0]"),
    ({"disks": [{"id": "lun", "path": "/dev/sdz", "passthrough": True}]}, "disks[0].passthrough"),
])
def test_a_device_that_cannot_move_is_refused_naming_it_before_the_destination_is_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sections: dict[str, object], field: str,
) -> None:
    assert main(recorded(tmp_path, **sections)) == 2
    assert f"vmrun: error: fake: {field}: " in capsys.readouterr().err
    assert not (tmp_path / "remote-shell-ran").exists()


def test_a_vm_that_does_not_run_here_is_said_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(recorded(tmp_path)) == 2
    assert capsys.readouterr().err == "vmrun: error: fake is not running here\nvmrun: hint: vmrun status fake\n"
    assert not (tmp_path / "remote-shell-ran").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["-e", "ssh 'unclosed"], "cannot split the remote shell or remote vmrun command: No closing quotation"),
    (["--remote-vmrun", ""], "--to, -e and --remote-vmrun must not be empty, and --to must not start with '-'"),
])
def test_a_remote_command_that_cannot_be_split_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str,
) -> None:
    assert main([*recorded(tmp_path), *options]) == 2
    assert capsys.readouterr().err == f"vmrun: error: {message}\n"


def test_copy_storage_refuses_a_disk_the_destination_already_has_before_touching_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    there = tmp_path / "disk.qcow2"
    there.write_bytes(b"")
    iso = tmp_path / "seed.iso"
    iso.write_bytes(b"")
    spec = make_spec(disks=[{"id": "root", "path": str(there), "format": "qcow2", "size": "1M"},
                            {"id": "iso", "path": str(iso), "readonly": True}])
    offer = {"spec": converter.unstructure(spec), "spec_path": str(tmp_path / "s.toml"), "copy_storage": True}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(offer) + "\n"))
    run_root = tmp_path / "run"
    assert main(["--run-dir", str(run_root), "--state-dir", str(tmp_path / "state"), "migrate", spec.name,
                 "--incoming"]) == 2
    err = capsys.readouterr().err
    assert f"disks[0]: {there} already exists on the destination; --copy-storage creates it" in err
    assert "disks[1]" not in err  # a read-only disk is not copied: it must be there
    assert not (run_root / spec.name).exists()


def test_copy_storage_replaces_only_the_unchanged_file_the_guest_left_by_moving_away(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    left = tmp_path / "disk.qcow2"
    left.write_bytes(b"the guest's disk as it left")
    spec = make_spec(disks=[{"id": "root", "path": str(left), "format": "qcow2", "size": "1M"}])
    places = Places(run_root=tmp_path / "run", state_root=tmp_path / "state")
    host = fake_host(tmp_path)
    record_left(host, places.of(spec.name), [str(left)])
    assert _present(spec, host, places.of(spec.name)) == []  # the file it left: replaced

    # Another file at that path, the same bytes and times but not the file that was recorded: refused, kept.
    other = tmp_path / "other.qcow2"
    shutil.copy2(left, other)
    other.replace(left)
    offer = {"spec": converter.unstructure(spec), "spec_path": str(tmp_path / "s.toml"), "copy_storage": True}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(offer) + "\n"))
    assert main(["--run-dir", str(places.run_root), "--state-dir", str(places.state_root), "migrate", spec.name,
                 "--incoming"]) == 2
    assert f"disks[0]: {left} already exists on the destination; --copy-storage creates it" in capsys.readouterr().err
    assert left.read_bytes() == b"the guest's disk as it left" and not places.of(spec.name).run_dir.exists()


def test_the_destination_refuses_a_vm_with_a_seed_the_source_did_not_send(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The seed comes from the source, byte for byte: the user's files are not read here."""
    spec = make_spec(cloud_init={"user_data": str(tmp_path / "not-here.yaml")})
    offer = {"spec": converter.unstructure(spec), "spec_path": str(tmp_path / "s.toml"), "seed": "not base64!",
             "seed_id": "iid-x"}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(offer) + "\n"))
    assert main(["--run-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"), "migrate", spec.name,
                 "--incoming"]) == 2
    assert capsys.readouterr().err == \
        "vmrun: error: the source sent no cloud-init seed: is its vmrun as recent as this one?\n"


def qemu_with_mirrors(jobs: list[Message]) -> Script:
    def script(request: Message) -> Iterable[object]:
        if request["execute"] == "query-block-jobs":
            return [answer(request, jobs)]
        return [answer(request, {})]

    return script


def test_the_source_mirrors_an_overlay_top_and_a_whole_disk_into_the_destinations_exports(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    mirrors = [Mirror("root", top=True), Mirror("data")]
    jobs = [{"device": "copy-root", "len": 100, "offset": 100, "ready": True},
            {"device": "copy-data", "len": 50, "offset": 20, "ready": False}]
    with FakePeer(path, qemu_with_mirrors(jobs), greeting=QMP_GREETING) as peer, \
            MigrationMonitor(path) as monitor:
        monitor.connect(timeout=5)
        monitor.mirror(mirrors, "10.0.0.2", 10809)
        assert monitor.copying(mirrors) == Copying(ready=False, done=120, total=150)
        jobs[1].update(offset=50, ready=True)
        assert monitor.copying(mirrors) == Copying(ready=True, done=150, total=150)
        jobs[0]["error"] = "Input/output error"
        with pytest.raises(LaunchError, match="qemu failed to copy disk copy-root: Input/output error"):
            monitor.copying(mirrors)
    server = {"type": "inet", "host": "10.0.0.2", "port": "10809"}
    assert [(request["execute"], request.get("arguments")) for request in peer.received[1:5]] == [
        ("blockdev-add", {"driver": "nbd", "node-name": "root-copy", "server": server, "export": "root"}),
        ("blockdev-mirror", {"job-id": "copy-root", "device": "root", "target": "root-copy", "sync": "top"}),
        ("blockdev-add", {"driver": "nbd", "node-name": "data-copy", "server": server, "export": "data"}),
        ("blockdev-mirror", {"job-id": "copy-data", "device": "data", "target": "data-copy", "sync": "full"}),
    ]


@pytest.mark.parametrize(("detach", "commands"), [
    (False, ["block-job-cancel", "query-block-jobs"]),
    (True, ["block-job-cancel", "query-block-jobs", "blockdev-del"]),
])
def test_mirrors_end_complete_after_the_switch_over_and_abandoned_before_it(
    tmp_path: Path, detach: bool, commands: list[str],
) -> None:
    path = tmp_path / "qmp.sock"
    with FakePeer(path, qemu_with_mirrors([]), greeting=QMP_GREETING) as peer, MigrationMonitor(path) as monitor:
        monitor.connect(timeout=5)
        monitor.end_mirrors([Mirror("root")], detach=detach)
    assert peer.commands()[1:] == commands
    assert peer.received[1]["arguments"] == {"device": "copy-root", "force": detach}


def test_the_destination_exports_each_disk_writable_on_a_port_it_says(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    with FakePeer(path, qemu_with_mirrors([]), greeting=QMP_GREETING) as peer, MigrationMonitor(path) as monitor:
        monitor.connect(timeout=5)
        port = monitor.export("127.0.0.1", ["root", "data"])
    assert peer.received[1]["arguments"] == {"addr": {"type": "inet", "data": {"host": "127.0.0.1",
                                                                                "port": str(port)}}}
    assert [request["arguments"] for request in peer.received[2:]] == [
        {"type": "nbd", "id": f"export-{node}", "node-name": node, "name": node, "writable": True}
        for node in ("root", "data")]


class KillableHost(FakeHost):
    """A fake host whose fake processes a signal ends (and no real process gets it)."""

    def signal(self, pid: int, number: int) -> None:
        shutil.rmtree(self.root / "proc" / str(pid), ignore_errors=True)


def left_behind(tmp_path: Path, qemu_status: str, mark: str | None) -> tuple[FakeHost, Places, FakePeer]:
    """A VM "fake" whose qemu (a fake process, a scripted monitor) reports qemu_status, its state marked;
    quitting that qemu ends its process."""
    host = KillableHost(**attrs.asdict(fake_host(tmp_path), recurse=False))
    places = Places(run_root=tmp_path / "run", state_root=tmp_path / "state")
    paths = places.of("fake")
    StateJournal.begin(paths, VmState(name="fake", spec_path="s", argv=("qemu",), accel="tcg", accel_reason="r",
                                      migration=mark))
    fake_process(host, 42, "qemu", "-name", "guest=fake,process=vmrun-fake", "-pidfile", str(paths.pidfile))
    paths.pidfile.write_text("42\n")

    def script(request: Message) -> Iterable[object]:
        if request["execute"] == "query-status":
            return [answer(request, {"status": qemu_status, "running": qemu_status == "running"})]
        if request["execute"] == "quit":
            shutil.rmtree(host.root / "proc" / "42")
            return [answer(request, {}), HANG_UP]
        return [answer(request, {})]

    return host, places, FakePeer(paths.qmp_socket, script, greeting=QMP_GREETING)


# status asks the qemu of a VM whose state is marked, which knows best after a kill that came between a
# switch-over and the next mark; status -a asks every qemu.
@pytest.mark.parametrize(("qemu_status", "mark", "shown", "asked"), [
    ("postmigrate", "migrated", "migrated", "migrated"),
    ("postmigrate", "outgoing", "migrated", "migrated"),  # killed between the switch-over and its mark
    ("running", "outgoing", "running", "running"),  # killed while sending, or before a failure cleared the mark
    ("postmigrate", None, "running", "migrated"),  # unmarked (no vmrun marks so): only -a asks
    ("inmigrate", "incoming", "incoming", "incoming"),
    ("running", "incoming", "running", "running"),  # killed after the guest arrived, before the mark was cleared
    ("running", None, "running", "running"),
])
def test_status_says_which_side_of_a_migration_runs_the_guest(
    tmp_path: Path, qemu_status: str, mark: str | None, shown: str, asked: str,
) -> None:
    host, places, peer = left_behind(tmp_path, qemu_status, mark)
    with peer:
        assert [vm.state for vm in status(host, places)] == [shown]
        assert [vm.state for vm in status(host, places, addresses=True)] == [asked]


@pytest.mark.parametrize(("mark", "shown"), [("migrated", "migrated"), ("incoming", "incoming"),
                                             ("outgoing", "dead"), (None, "dead")])
def test_a_run_whose_qemu_is_gone_says_what_its_migration_left(tmp_path: Path, mark: str | None, shown: str) -> None:
    """Killed after a source's qemu quit, or before a destination's started: no guest to resume here."""
    places = Places(run_root=tmp_path / "run", state_root=tmp_path / "state")
    StateJournal.begin(places.of("fake"), VmState(name="fake", spec_path="s", argv=("qemu",), accel="tcg",
                                                  accel_reason="r", migration=mark))
    assert [vm.state for vm in status(fake_host(tmp_path), places, addresses=True)] == [shown]


@pytest.mark.parametrize(("qemu_status", "mark", "cleaned"), [
    ("postmigrate", "migrated", "the source's qemu, paused since its guest left"),
    ("inmigrate", "incoming", "the destination's qemu that never got the guest"),
])
def test_abort_cleans_a_paused_source_or_a_waiting_destination(
    tmp_path: Path, qemu_status: str, mark: str, cleaned: str,
) -> None:
    host, places, peer = left_behind(tmp_path, qemu_status, mark)
    with peer:
        assert abort("fake", host, places, say=print) == cleaned
    assert not places.of("fake").run_dir.exists() and not (host.root / "proc" / "42").exists()


def test_abort_refuses_the_side_that_runs_the_guest(tmp_path: Path) -> None:
    host, places, peer = left_behind(tmp_path, "running", None)
    with peer, pytest.raises(UsageError, match="^fake is running here: this is the live copy, which --abort"):
        abort("fake", host, places, say=print)
    assert places.of("fake").run_dir.exists() and (host.root / "proc" / "42").exists()


def test_abort_of_nothing_and_with_a_destination_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    places = ["--run-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state")]
    assert main([*places, "migrate", "fake", "--abort"]) == 2
    assert capsys.readouterr().err == \
        "vmrun: error: fake has no run here: nothing to abort\nvmrun: hint: vmrun status\n"
    assert main([*places, "migrate", "fake", "--abort", "--to", "elsewhere"]) == 2
    assert "--abort cleans this host: it takes no --to or --copy-storage" in capsys.readouterr().err


class Recorder(Meter):
    def __init__(self) -> None:
        super().__init__("test", stream=io.StringIO())
        self.shown: list[tuple[int, int | None, str | None]] = []

    def show(self, done: int, total: int | None, *, label: str | None = None) -> None:
        self.shown.append((done, total, label))


def test_the_meter_follows_the_ram_while_the_migration_runs(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    answers = iter([{"status": "active", "ram": {"transferred": 10, "remaining": 90}},
                    {"status": "active", "ram": {"transferred": 60, "remaining": 60}},
                    {"status": "completed", "ram": {"transferred": 130, "remaining": 0}, "downtime": 3}])

    def script(request: Message) -> Iterable[object]:
        return [answer(request, next(answers) if request["execute"] == "query-migrate" else {})]

    meter = Recorder()
    with FakePeer(path, script, greeting=QMP_GREETING), MigrationMonitor(path) as monitor:
        monitor.connect(timeout=5)
        assert _wait(monitor, float("inf"), meter).downtime_ms == 3
    assert meter.shown == [(10, 100, "RAM"), (60, 120, "RAM")]
