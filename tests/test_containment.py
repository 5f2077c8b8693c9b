"""vmrun runs as root: names from a command line or a spec never reach a path outside its roots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmrun.errors import UsageError
from vmrun.spec.load import parse_spec
from vmrun.spec.model import Spec
from vmrun.state.locations import Places
from vmrun.state.vmstate import VmState, create_run_dir, remove_run_dir

ESCAPES = ["..", "../x", "/", ".", "", "a/b", "/etc", "x/../..", "-rf", "UPPER", "a" * 64, "tiny\n"]


def vmrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmrun", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def places(tmp_path: Path) -> Places:
    return Places(run_root=tmp_path / "run", state_root=tmp_path / "state")


def snapshot(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


@pytest.mark.parametrize("name", ESCAPES)
def test_names_that_are_no_vm_names_never_become_paths(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="is not a VM name"):
        places(tmp_path).of(name)


@pytest.mark.parametrize("command", ["down", "status", "logs", "console"])
@pytest.mark.parametrize("name", ["..", "../x", "/", "."])
def test_escape_names_on_the_command_line_delete_nothing(tmp_path: Path, command: str, name: str) -> None:
    run_root = tmp_path / "root" / "run"
    run_root.mkdir(parents=True)
    (tmp_path / "root" / "precious").write_text("keep me")
    before = snapshot(tmp_path)
    # Run where "." holds no specs: for down, "." and "/" are directories of specs.
    result = vmrun("--run-dir", str(run_root), "--state-dir", str(tmp_path / "state"), command, name, cwd=run_root)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") <= 2 and "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before


def test_exec_with_an_escape_name_is_a_usage_error(tmp_path: Path) -> None:
    result = vmrun("--run-dir", str(tmp_path), "exec", "..", "--", "true")
    assert result.returncode == 2
    assert "neither a VM name nor a spec file" in result.stderr


def test_down_of_a_spec_whose_name_climbs_out_names_the_spec(tmp_path: Path) -> None:
    run_root = tmp_path / "run"
    (run_root / "x").mkdir(parents=True)
    spec = tmp_path / "evil.toml"
    spec.write_text('name = "../x"\n[boot]\nkernel = "k"\n')
    result = vmrun("--run-dir", str(run_root / "x"), "down", str(spec))
    assert result.returncode == 2
    assert f"vmrun: error: {spec}: name: '../x' is not a valid VM name" in result.stderr
    assert (run_root / "x").is_dir()


def test_a_run_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "state.json").write_text("{}")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "web").symlink_to(target)
    with pytest.raises(UsageError, match="is a symbolic link"):
        places(tmp_path).of("web")
    result = vmrun("--run-dir", str(tmp_path / "run"), "down", "web")
    assert result.returncode == 2
    assert (target / "state.json").exists()


def test_a_run_root_that_is_a_symlink_is_followed_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    paths = Places(run_root=tmp_path / "link", state_root=tmp_path / "state").of("web")
    assert paths.run_dir == tmp_path / "real" / "web"


def test_only_a_directory_holding_vmrun_state_is_removed(tmp_path: Path) -> None:
    # `--run-dir /` with a VM called "etc" must not empty /etc.
    foreign = Places(run_root=tmp_path, state_root=tmp_path / "state").of("etc")
    foreign.run_dir.mkdir()
    (foreign.run_dir / "passwd").write_text("root:x:0:0")
    with pytest.raises(UsageError, match="holds no vmrun state"):
        remove_run_dir(foreign)
    assert (foreign.run_dir / "passwd").exists()

    ours = places(tmp_path).of("web")
    create_run_dir(ours, VmState(name="web", spec_path="s", argv=(), accel="tcg", accel_reason="r"))
    (ours.run_dir / "console.log").write_text("boot")
    remove_run_dir(ours)
    assert not ours.run_dir.exists()


def test_down_with_a_foreign_run_root_keeps_its_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0")
    result = vmrun("--run-dir", str(tmp_path), "down", "etc")
    assert result.returncode == 2
    assert "holds no vmrun state" in result.stderr
    assert (tmp_path / "etc" / "passwd").read_text() == "root:x:0:0"


def nic_spec(name: str, nic_id: str) -> Spec:
    return parse_spec({"name": name, "boot": {"kernel": "k"}, "machine": {"cpus": 2},
                       "nics": [{"id": nic_id}]}, source="t", base=Path("/"))


def test_derived_taps_of_vms_whose_names_split_differently_do_not_collide() -> None:
    first, second = nic_spec("a-b", "c"), nic_spec("a", "b-c")
    assert first.nics[0].host_tap == "a-b.c"
    assert second.nics[0].host_tap == "a.b-c"
    long_one = nic_spec("a-long-vm-name", "net0")
    hashed = long_one.nics[0].host_tap
    assert len(hashed) == 15 and hashed.startswith("vm") and "." not in hashed


def test_lock_files_live_under_the_run_root_only(tmp_path: Path) -> None:
    from vmrun.state.locks import vm_busy, vm_lock

    said: list[str] = []
    with vm_lock(places(tmp_path), "web", wait=False, say=said.append):
        assert vm_busy(places(tmp_path), "web")
        with pytest.raises(UsageError, match="web is running or starting"):
            with vm_lock(places(tmp_path), "web", wait=False, say=said.append):
                pass
    assert not vm_busy(places(tmp_path), "web")
    assert os.listdir(tmp_path / "run") == [".locks"]
    assert os.listdir(tmp_path / "run" / ".locks") == ["web.lock"]


def test_a_linked_or_misnamed_entry_in_the_run_root_is_not_a_vm(tmp_path: Path) -> None:
    from vmrun.state.glance import vm_names

    ours = places(tmp_path).of("web")
    create_run_dir(ours, VmState(name="web", spec_path="s", argv=(), accel="tcg", accel_reason="r"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "state.json").write_text("{}")
    (tmp_path / "run" / "evil").symlink_to(elsewhere)
    (tmp_path / "run" / "Not_A_Name").mkdir()
    (tmp_path / "run" / "Not_A_Name" / "state.json").write_text("{}")
    assert vm_names(tmp_path / "run") == ["web"]
