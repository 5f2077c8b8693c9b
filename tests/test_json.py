"""Every command's --json against one JSON Schema (tests/vmrun-json.schema.json): one vocabulary, checked for
each command that has the option, with no running VM needed (exec and cp reach a scripted agent)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vmrun.cli.main import main
from vmrun.cli.parser import build_parser
from vmrun.run import status as run_status
from vmrun.run.migrate import Moved
from vmrun.state.locations import Places, RunPaths

from .common import SPECS
from .fakepeer import FakePeer
from .test_agent import exec_peer
from .test_copy import FakeGuest

SCHEMA = json.loads((Path(__file__).parent / "vmrun-json.schema.json").read_text())


def check(kind: str, value: object) -> None:
    jsonschema.Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": SCHEMA["$defs"]}).validate(value)


def commands_with_json() -> set[str]:
    found = set()

    def walk(parser: Any, words: tuple[str, ...]) -> None:
        for action in parser._actions:
            if "--json" in action.option_strings:
                found.add(" ".join(words))
            for word, sub in getattr(action, "choices", None).items() if hasattr(action, "_name_parser_map") else ():
                walk(sub, (*words, word))

    walk(build_parser(), ())
    return found


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path, self.capsys = tmp_path, capsys
        self.places = Places(run_root=tmp_path / "run", state_root=tmp_path / "state", image_cache=tmp_path / "cache")

    def json(self, *args: str, exit_codes: tuple[int, ...] = (0,)) -> Any:
        exit_code = main(["--run-dir", str(self.places.run_root), "--state-dir", str(self.places.state_root),
                          "--cache-dir", str(self.places.image_cache), *args,
                          *(() if "--json" in args else ("--json",))])
        out, err = self.capsys.readouterr()
        assert exit_code in exit_codes, err
        return json.loads(out)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    monkeypatch.chdir(tmp_path)
    yield Cli(tmp_path, capsys)


# The commands the tests below run with --json: every one that has the option (the last test holds it to it).
COVERED = {"validate", "render", "init", "preflight", "diff", "up", "down", "status", "host check", "host iommu",
           "image pull", "image list", "image rm", "image prune", "exec", "cp", "snapshot list", "migrate"}


def checked(command: str, kind: str, value: object) -> None:
    assert command in COVERED
    check(kind, value)


def test_spec_commands(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('name = "Bad"\n[boot]\nkernel = "k"\n')
    rows = cli.json("validate", str(SPECS), str(tmp_path / "bad.toml"), exit_codes=(2,))
    checked("validate", "validate", rows)
    assert [row["valid"] for row in rows][-1] is False and rows[-1]["errors"][0].startswith(f"{tmp_path}/bad.toml: ")
    checked("render", "render", cli.json("render", str(SPECS / "tiny.toml")))
    checked("init", "init", cli.json("init", "web"))
    checked("init", "init", cli.json("init", "cloud", "--base", "cloud.qcow2"))
    checked("preflight", "preflight", cli.json("preflight", "--dry-run", str(SPECS / "tiny-user.toml")))


def test_vm_commands_with_no_vm_running(cli: Cli, tmp_path: Path) -> None:
    checked("diff", "diff", cli.json("diff", str(SPECS / "tiny-user.toml"), exit_codes=(6,)))
    (tmp_path / "bad.toml").write_text('name = "bad"\n')
    checked("up", "fates", cli.json("up", str(tmp_path / "bad.toml"), exit_codes=(2,)))
    checked("diff", "diff", cli.json("diff", str(tmp_path / "bad.toml"), exit_codes=(2,)))
    checked("down", "fates", cli.json("down", "web"))
    checked("status", "status", cli.json("status"))
    checked("host check", "host_check", cli.json("host", "check"))
    checked("host iommu", "host_iommu", cli.json("host", "iommu"))


def test_image_commands(cli: Cli, tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(b"an image\n")
    digest = "sha256:" + hashlib.sha256(b"an image\n").hexdigest()
    checked("image pull", "image_pull", cli.json("image", "pull", f"file://{image}", "--digest", digest))
    listed = cli.json("image", "list")
    checked("image list", "image_list", listed)
    assert [row["digest"] for row in listed] == [digest]
    removed = cli.json("image", "rm", digest[:12])
    checked("image rm", "image_rm", removed)
    assert removed == {"removed": [digest], "kept": []}
    cli.json("image", "pull", f"file://{image}", "--digest", digest)
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "bad.toml").write_text(f'name = "Bad"\n[[disks]]\nbase_digest = "{digest}"\n')
    partial = tmp_path / "cache" / f".{digest.replace(':', '-')}.x.partial"
    partial.write_bytes(b"an im")
    pruned = cli.json("image", "prune", str(tmp_path / "specs"))
    checked("image prune", "image_prune", pruned)
    assert (pruned["kept"][0]["digest"], pruned["partial_files"], pruned["invalid"][0]["spec"]) == (
        digest, [str(partial)], str(tmp_path / "specs" / "bad.toml"))


def test_guest_commands(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    socket_path = tmp_path / "qga.sock"
    monkeypatch.setattr(run_status, "running_paths",
                        lambda host, places, name: RunPaths(run_dir=socket_path.parent, state_dir=tmp_path))
    monkeypatch.setattr(RunPaths, "agent_socket", property(lambda paths: socket_path))
    with FakePeer(socket_path, exec_peer({"exitcode": 0})):
        ran = cli.json("exec", "web", "--json", "--", "echo")  # vmrun's option, though after NAME
    checked("exec", "exec", ran)
    (tmp_path / "f").write_bytes(b"hello")
    socket_path.unlink()  # the next agent binds it afresh
    with FakePeer(socket_path, FakeGuest({})):
        copied = cli.json("cp", str(tmp_path / "f"), "web:/tmp/")
    checked("cp", "cp", copied)
    assert copied == {"name": "web", "source": str(tmp_path / "f"), "destination": "web:/tmp/f", "bytes": 5,
                      "files": None}


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_snapshot_list_of_a_stopped_vm(cli: Cli, tmp_path: Path) -> None:
    disk = tmp_path / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    subprocess.run(["qemu-img", "snapshot", "-c", "before", str(disk)], check=True)
    spec = tmp_path / "snap.toml"
    spec.write_text(f'name = "snap"\n[boot]\ndisk = "root"\n[[disks]]\nid = "root"\npath = "{disk}"\n'
                    'format = "qcow2"\n')
    listed = cli.json("snapshot", "list", str(spec))
    checked("snapshot list", "snapshot_list", listed)
    assert [row["tag"] for row in listed["snapshots"]] == ["before"]


def test_migrate_prints_one_object_in_the_vocabulary() -> None:
    """What `migrate --json` prints (the move itself needs a second host: integration/test_migrate.py)."""
    moved = Moved(name="web", state="migrated", to="10.0.0.2", downtime_ms=44, total_ms=742, bytes=100_000_000,
                  disk_bytes=None)
    checked("migrate", "migrate", json.loads(json.dumps(moved.to_json())))


def test_every_command_with_json_is_covered() -> None:
    assert commands_with_json() == COVERED
