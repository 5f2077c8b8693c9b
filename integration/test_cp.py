"""`vmrun cp` both ways with the tiny guest: the bytes and permission bits arrive, failures say the guest's words."""

from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path

import pytest

from .conftest import Vmrun
from .test_tiny_guest import guest, pytestmark, tiny  # noqa: F401 - the tiny guest's boot, and its skip

COPIED = re.compile(r"vmrun: copied (\d+) bytes to (\S+) in \d+\.\d s \(\d+\.\d MiB/s\)\n")
COPIED_TREE = re.compile(r"vmrun: copied (\d+) files, (\d+) bytes to (\S+) in \d+\.\d s \(\d+\.\d MiB/s\)\n")
TREE = {"etc/app.conf": 0o640, "etc/deep/a file": 0o600, "run.sh": 0o755}  # and modes of etc, etc/deep below


@pytest.mark.usefixtures("tiny")
def test_cp_both_ways_keeps_bytes_and_mode_and_reports_the_guests_errors(vmrun: Vmrun, tmp_path: Path) -> None:
    payload = random.Random(7).randbytes(300 * 1024 + 7)  # a few chunks' worth of base64 would be 1 MiB
    digest = hashlib.sha256(payload).hexdigest()
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    source.chmod(0o741)

    into = vmrun("cp", str(source), "tiny:/tmp/")
    assert into.returncode == 0, into.stderr
    assert COPIED.fullmatch(into.stderr).groups() == (str(len(payload)), "tiny:/tmp/payload.bin")  # type: ignore[union-attr]
    assert guest(vmrun, "tiny", "sha256sum", "/tmp/payload.bin") == f"{digest}  /tmp/payload.bin\n"
    assert guest(vmrun, "tiny", "stat", "-c", "%a", "/tmp/payload.bin") == "741\n"
    assert guest(vmrun, "tiny", "ls", "-A", "/tmp") == "payload.bin\n"  # no temporary file left beside it
    again = vmrun("cp", str(source), "tiny:/tmp")  # an existing directory without the slash: DIR/NAME too
    assert again.returncode == 0, again.stderr
    assert guest(vmrun, "tiny", "ls", "-A", "/tmp") == "payload.bin\n"

    back = tmp_path / "back"
    back.mkdir()
    out = vmrun("cp", "tiny:/tmp/payload.bin", str(back))
    assert out.returncode == 0, out.stderr
    assert COPIED.fullmatch(out.stderr).groups() == (str(len(payload)), str(back / "payload.bin"))  # type: ignore[union-attr]
    assert hashlib.sha256((back / "payload.bin").read_bytes()).hexdigest() == digest
    assert (back / "payload.bin").stat().st_mode & 0o7777 == 0o741
    assert [path.name for path in back.iterdir()] == ["payload.bin"]

    # A file the agent reads to its end without knowing its size, to a host path with a colon in it.
    version = vmrun("cp", "tiny:/proc/version", str(back / "a:b"))
    assert version.returncode == 0, version.stderr
    assert (back / "a:b").read_text() == guest(vmrun, "tiny", "cat", "/proc/version")

    missing = vmrun("cp", "tiny:/no/such/file", str(back / "nothing"))
    assert (missing.returncode, missing.stderr) == (5, (
        "vmrun: error: tiny: the guest agent failed to open /no/such/file: "
        "failed to open file '/no/such/file' (mode: 'rb'): No such file or directory\n"))
    read_only = vmrun("cp", str(source), "tiny:/mnt/keymaps/")
    assert read_only.returncode == 5 and read_only.stderr.endswith("Read-only file system\n"), read_only.stderr
    assert sorted(path.name for path in back.iterdir()) == ["a:b", "payload.bin"]

    bad_name = vmrun("cp", str(source), "Tiny:/tmp/")
    assert (bad_name.returncode, bad_name.stderr.splitlines()[0]) == (
        2, "vmrun: error: Tiny:/tmp/: 'Tiny' is not a VM name")
    not_running = vmrun("cp", str(source), "tiny2:/tmp/")
    assert (not_running.returncode, not_running.stderr.splitlines()[0]) == (
        2, f"vmrun: error: no VM tiny2 under {vmrun.run_root}")

    # A tree both ways: nested directories, a name with a space, modes, a link; into a directory it keeps its name.
    tree = tmp_path / "tree"
    (tree / "etc" / "deep").mkdir(parents=True)
    for index, (name, mode) in enumerate(TREE.items()):
        (tree / name).write_bytes(random.Random(index).randbytes(10_000 * index + 3))
        (tree / name).chmod(mode)
    (tree / "etc").chmod(0o750)
    (tree / "config").symlink_to("etc/app.conf")
    digests = {name: hashlib.sha256((tree / name).read_bytes()).hexdigest() for name in TREE}
    size = sum((tree / name).stat().st_size for name in TREE)

    into_tree = vmrun("cp", "-r", str(tree), "tiny:/tmp")
    assert into_tree.returncode == 0, into_tree.stderr
    assert COPIED_TREE.fullmatch(into_tree.stderr).groups() == ("3", str(size), "tiny:/tmp/tree")  # type: ignore[union-attr]
    assert guest(vmrun, "tiny", "sha256sum", *(f"/tmp/tree/{name}" for name in TREE)) == "".join(
        f"{digests[name]}  /tmp/tree/{name}\n" for name in TREE)
    assert guest(vmrun, "tiny", "stat", "-c", "%a %n", "/tmp/tree", "/tmp/tree/etc", "/tmp/tree/etc/deep",
                 *(f"/tmp/tree/{name}" for name in TREE)) == (
        "755 /tmp/tree\n750 /tmp/tree/etc\n755 /tmp/tree/etc/deep\n640 /tmp/tree/etc/app.conf\n"
        "600 /tmp/tree/etc/deep/a file\n755 /tmp/tree/run.sh\n")
    assert guest(vmrun, "tiny", "readlink", "/tmp/tree/config") == "etc/app.conf\n"
    assert guest(vmrun, "tiny", "ls", "-A", "/tmp") == "payload.bin\ntree\n"  # no temporary directory left

    out_tree = vmrun("cp", "--recursive", "tiny:/tmp/tree", str(back / "copy"))
    assert out_tree.returncode == 0, out_tree.stderr
    assert COPIED_TREE.fullmatch(out_tree.stderr).groups() == ("3", str(size), str(back / "copy"))  # type: ignore[union-attr]
    copied = back / "copy"
    assert {name: hashlib.sha256((copied / name).read_bytes()).hexdigest() for name in TREE} == digests
    assert {name: (copied / name).stat().st_mode & 0o7777 for name in TREE} == TREE
    assert [(copied / name).stat().st_mode & 0o7777 for name in ("", "etc", "etc/deep")] == [0o755, 0o750, 0o755]
    assert os.readlink(copied / "config") == "etc/app.conf"
    assert sorted(path.name for path in back.iterdir()) == ["a:b", "copy", "payload.bin"]

    again = vmrun("cp", "-r", str(tree), "tiny:/tmp/")  # /tmp/tree is there now: no merging
    assert (again.returncode, again.stderr.splitlines()[0]) == (2, "vmrun: error: tiny:/tmp/tree exists")
    no_r = vmrun("cp", "tiny:/tmp/tree", str(back))
    assert (no_r.returncode, no_r.stderr) == (
        2, "vmrun: error: tiny:/tmp/tree is a directory\nvmrun: hint: vmrun cp -r copies a directory\n")
