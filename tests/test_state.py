"""The per-VM state file: written atomically, read back whole, unreadable state is no state."""

from __future__ import annotations

from pathlib import Path

from vmrun.locations import RunPaths
from vmrun.state import VmState, create_run_dir, read_state, vm_names, write_state


def test_state_round_trips_and_run_dir_is_private(tmp_path: Path) -> None:
    paths = RunPaths(run_dir=tmp_path / "run" / "web", state_dir=tmp_path / "state" / "web")
    create_run_dir(paths)
    assert paths.run_dir.stat().st_mode & 0o777 == 0o700
    state = VmState(
        name="web", spec_path="/specs/web.toml", argv=("qemu-system-x86_64", "-m", "512"), accel="tcg",
        accel_reason="auto: no KVM", changes=({"action": "write", "path": "/sys/x", "value": "1", "undo": []},),
        writable_disks=("/var/lib/web.raw",), wants_ksm=True,
    )
    write_state(paths, state)
    assert read_state(paths) == state
    assert vm_names(tmp_path / "run") == ["web"]
    assert [entry.name for entry in paths.run_dir.iterdir()] == ["state.json"]  # no temporary file left


def test_corrupt_state_reads_as_none(tmp_path: Path) -> None:
    paths = RunPaths(run_dir=tmp_path, state_dir=tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    assert read_state(paths) is None
