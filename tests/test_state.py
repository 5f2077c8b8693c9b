"""The per-VM state file and run directory: whole or absent at any instant, and never "no state" when damaged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vmrun.errors import UsageError
from vmrun.state.glance import state_path, vm_names
from vmrun.state.locations import Places, RunPaths
from vmrun.state.vmstate import VmState, create_run_dir, read_state, write_state

from .common import REPO

STATE = VmState(name="web", spec_path="/specs/web.toml", argv=("qemu",), accel="tcg", accel_reason="r")


def places(tmp_path: Path) -> Places:
    return Places(run_root=tmp_path / "run", state_root=tmp_path / "state")


def test_state_round_trips_and_run_dir_is_private(tmp_path: Path) -> None:
    paths = RunPaths(run_dir=tmp_path / "run" / "web", state_dir=tmp_path / "state" / "web")
    create_run_dir(paths, STATE)
    assert paths.run_dir.stat().st_mode & 0o777 == 0o700
    state = VmState(
        name="web", spec_path="/specs/web.toml", argv=("qemu-system-x86_64", "-m", "512"), accel="tcg",
        accel_reason="auto: no KVM", changes=({"action": "write", "path": "/sys/x", "value": "1", "undo": [],
                                               "on_down": "undo"},),
        writable_disks=("/var/lib/web.raw",), wants_ksm=True,
    )
    write_state(paths, state)
    assert read_state(paths) == state
    assert vm_names(tmp_path / "run") == ["web"]
    assert sorted(entry.name for entry in paths.run_dir.iterdir()) == ["journal.log", "state.json"]  # nothing else
    assert sorted(entry.name for entry in (tmp_path / "run").iterdir()) == ["web"]


@pytest.mark.parametrize("damage", ["{not json", "[]", '{"name": "web"}', json.dumps(
    {**json.loads(STATE.to_json()), "changes": [{"action": "write", "path": "/sys/x"}]})])
def test_a_state_file_that_cannot_be_parsed_is_an_error_naming_it(tmp_path: Path, damage: str) -> None:
    paths = places(tmp_path).of("web")
    paths.run_dir.mkdir(parents=True)
    state_path(paths).write_text(damage)
    with pytest.raises(UsageError) as raised:
        read_state(paths)
    assert str(raised.value) == f"{state_path(paths)} is not a state file vmrun wrote: what web holds on the host " \
                                "is unknown"
    assert raised.value.hint is not None and "vmrun down --force web" in raised.value.hint


def test_a_state_file_that_cannot_be_read_is_an_error_naming_it(tmp_path: Path) -> None:
    paths = places(tmp_path).of("web")
    state_path(paths).mkdir(parents=True)  # reading it fails as an unreadable file would
    with pytest.raises(UsageError, match=f"^{state_path(paths)} cannot be read \\(Is a directory\\)"):
        read_state(paths)


KILLED_WHILE = """\
import sys
from pathlib import Path
from vmrun.state.locations import Places
from vmrun.state.vmstate import StateJournal, VmState, remove_run_dir
paths = Places(Path(sys.argv[1]), Path(sys.argv[2])).of("web")
if sys.argv[3] == "create":
    journal = StateJournal.begin(paths, VmState("web", "s", (), "tcg", "r"))
    journal.record(())
else:
    remove_run_dir(paths)
"""


def killed_at(point: int, step: str, tmp_path: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-X", "vmrun-crash-points", "-c", KILLED_WHILE, str(tmp_path / "run"),
         str(tmp_path / "state"), step],
        cwd=REPO, env={**os.environ, "VMRUN_TEST_KILL_AT": str(point)}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode in (0, -signal.SIGKILL), result.stderr
    return result.returncode


def vmrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmrun", "--host-root", str(tmp_path / "host"), "--run-dir", str(tmp_path / "run"),
         "--state-dir", str(tmp_path / "state"), *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("step", ["create", "remove"])
def test_a_vmrun_killed_while_making_or_removing_a_run_dir_leaves_what_down_removes(
    tmp_path: Path, step: str
) -> None:
    (tmp_path / "host" / "proc").mkdir(parents=True)
    kills = 0
    for point in range(1, 10):
        if step == "remove":
            create_run_dir(places(tmp_path).of("web"), STATE)
        if killed_at(point, step, tmp_path) == 0:
            break
        kills += 1
        assert vm_names(tmp_path / "run") == ["web"]  # listed, so `down --all` finds it
        down = vmrun(tmp_path, "down", "--all")
        assert down.returncode == 0, down.stderr
        assert sorted(os.listdir(tmp_path / "run")) == [".locks"]
    assert kills >= 1
