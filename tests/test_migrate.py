"""`vmrun migrate` before anything moves: what cannot move is refused before the destination is reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmrun.cli.main import main
from vmrun.spec.load import converter
from vmrun.state.locations import Places
from vmrun.state.vmstate import StateJournal, VmState

from .test_preflight import make_spec


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
