"""`vmrun snapshot` without a running qemu: what is refused (exit 2, one line per field, no traceback), and the
snapshots of a stopped VM's disks, read from and deleted in the qcow2 files themselves with qemu-img."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")


def vmrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmrun", "--run-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"),
         *args], capture_output=True, text=True, timeout=60,
    )


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr
    return [line.removeprefix("vmrun: error: ") for line in result.stderr.splitlines()
            if line.startswith("vmrun: error: ")]


def qcow2(path: Path, *snapshots: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    for tag in snapshots:
        subprocess.run(["qemu-img", "snapshot", "-c", tag, str(path)], check=True)
    return path


def tags_in(path: Path) -> list[str]:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True,
                                     text=True, check=True).stdout)
    return [snapshot["name"] for snapshot in info.get("snapshots", [])]


SPEC = """\
name = "snap"
[boot]
kernel = "vmlinuz"
[[disks]]
id = "root"
path = "root.qcow2"
format = "qcow2"
"""


@pytest.mark.parametrize("tag", ["-d", "1", "a b", "../x", "a,b", "", "x" * 64, "Ab", "tag\n"])
@pytest.mark.parametrize("action", ["save", "restore", "rm"])
def test_a_tag_outside_the_rule_is_refused_before_any_vm_is_looked_at(tmp_path: Path, action: str, tag: str) -> None:
    result = vmrun(tmp_path, "snapshot", action, "snap", "--", tag)  # "--": a tag may look like an option
    assert result.returncode == 2
    [line] = errors(result)
    assert line.startswith(f"{tag!r} is not a snapshot tag")
    assert not (tmp_path / "run").exists()


def test_save_refuses_raw_ephemeral_and_passed_through_devices_naming_each(
    tmp_path: Path, write_spec: Callable[[str, str], Path]
) -> None:
    (tmp_path / "base.qcow2").touch()
    spec = write_spec(SPEC.replace('format = "qcow2"', 'format = "raw"') + """\
[[disks]]
id = "scratch"
path = "scratch.qcow2"
format = "qcow2"
base = "base.qcow2"
ephemeral = true
[[disks]]
id = "iso"
path = "install.iso"
readonly = true
[[vfio]]
id = "gpu"
host = "01:00.0"
""", "snap.toml")
    for action in ("save", "restore"):
        result = vmrun(tmp_path, "snapshot", action, str(spec), "before")
        assert result.returncode == 2
        # The read-only disk is no problem: nothing is written to it, so nothing needs saving.
        assert errors(result) == [
            f"snap: disks[0]: a raw disk cannot hold a snapshot (hint: convert it: qemu-img convert -O qcow2 "
            f"{tmp_path}/root.qcow2 NEW.qcow2, and name NEW.qcow2 with format = \"qcow2\")",
            "snap: disks[1]: an ephemeral disk is deleted at down, and its snapshots with it "
            "(hint: drop ephemeral = true to keep the overlay)",
            "snap: vfio[0]: a passed-through device's state cannot be saved",
        ]


def test_a_spec_without_a_writable_disk_has_nowhere_to_keep_a_snapshot(
    tmp_path: Path, write_spec: Callable[[str, str], Path]
) -> None:
    spec = write_spec(SPEC.split("[[disks]]")[0], "snap.toml")
    result = vmrun(tmp_path, "snapshot", "save", str(spec), "before")
    assert (result.returncode, errors(result)) == (2, [
        "snap: disks: no writable qcow2 disk to keep the snapshot in (hint: add one; its file holds the RAM too)"])


@needs_qemu_img
def test_save_and_restore_of_a_stopped_vm_are_refused_with_what_to_do(
    tmp_path: Path, write_spec: Callable[[str, str], Path]
) -> None:
    qcow2(tmp_path / "root.qcow2", "before")
    spec = write_spec(SPEC, "snap.toml")
    restore = vmrun(tmp_path, "snapshot", "restore", str(spec), "before")
    assert (restore.returncode, errors(restore)) == (2, ["snap is not running: restore continues a running guest"])
    assert f"vmrun: hint: vmrun up {spec}, then: vmrun snapshot restore snap before" in restore.stderr
    save = vmrun(tmp_path, "snapshot", "save", "snap", "after")
    assert (save.returncode, errors(save)) == (2, ["snap is not running: a snapshot saves a running guest"])
    assert tags_in(tmp_path / "root.qcow2") == ["before"]
    assert not (tmp_path / "run" / "snap").exists()


@needs_qemu_img
def test_a_stopped_vms_snapshots_are_listed_and_removed_from_its_disk_files(
    tmp_path: Path, write_spec: Callable[[str, str], Path]
) -> None:
    qcow2(tmp_path / "root.qcow2", "one", "two")
    spec = write_spec(SPEC, "snap.toml")
    listed = vmrun(tmp_path, "snapshot", "list", str(spec), "--json")
    assert listed.returncode == 0, listed.stderr
    answer = json.loads(listed.stdout)
    assert (answer["name"], answer["state"]) == ("snap", "stopped")
    assert [(row["tag"], row["vm_state_size"], row["guest_clock"], row["disks"]) for row in answer["snapshots"]] == [
        ("one", 0, 0.0, ["root"]), ("two", 0, 0.0, ["root"])]
    assert all(row["date"].endswith("+00:00") for row in answer["snapshots"])
    table = vmrun(tmp_path, "snapshot", "list", str(spec))
    assert table.stdout.splitlines()[0].split() == ["TAG", "DATE", "VM", "STATE", "GUEST", "CLOCK", "DISKS"]
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == ["one", "two"]

    removed = vmrun(tmp_path, "snapshot", "rm", str(spec), "one")
    assert removed.returncode == 0, removed.stderr
    assert tags_in(tmp_path / "root.qcow2") == ["two"]
    again = vmrun(tmp_path, "snapshot", "rm", str(spec), "one")
    assert (again.returncode, errors(again)) == (2, ["snap has no snapshot 'one'"])
    assert "vmrun: hint: vmrun snapshot list snap" in again.stderr


def test_a_stopped_vm_named_without_its_spec_is_told_to_name_the_spec(tmp_path: Path) -> None:
    result = vmrun(tmp_path, "snapshot", "list", "snap")
    assert (result.returncode, errors(result)) == (2, [
        "snap is not running, and a name alone does not say where its disks are"])
    assert "vmrun: hint: name its spec: vmrun snapshot list SPEC" in result.stderr


def test_a_vm_another_vmrun_is_working_on_is_refused_not_waited_for(
    tmp_path: Path, write_spec: Callable[[str, str], Path]
) -> None:
    import fcntl

    spec = write_spec(SPEC, "snap.toml")
    locks = tmp_path / "run" / ".locks"
    locks.mkdir(parents=True)
    with open(locks / "snap.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        for action in ("save", "restore", "rm"):
            result = vmrun(tmp_path, "snapshot", action, str(spec), "before")
            assert (result.returncode, errors(result)) == (
                2, ["snap is running or starting: another vmrun is working on it"]), action
