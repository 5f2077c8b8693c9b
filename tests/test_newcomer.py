"""What a new user runs into on the first day: where `init` and `export` write, `validate DIR`, `image rm` by a
digest prefix, and the one-line errors of each."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmrun.cli.main import main

from .common import SPECS


def run(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[int, str, list[str]]:
    """vmrun in-process with this test's run, state and cache dirs: exit code, stdout, stderr lines."""
    exit_code = main(["--run-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"),
                      "--cache-dir", str(tmp_path / "cache"), *args])
    out, err = capsys.readouterr()
    return exit_code, out, err.splitlines()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("args", "said"), [
    (("init", "web", "-o", "nodir/web.toml"),
     ["vmrun: error: cannot write nodir/web.toml: nodir is not a directory", "vmrun: hint: mkdir -p nodir"]),
    (("init", "web", "-o", "adir", "--force"),
     ["vmrun: error: adir is a directory", "vmrun: hint: -o names the file to write"]),
    (("init", "web", "-o", "adir"),
     ["vmrun: error: adir is a directory", "vmrun: hint: -o names the file to write"]),
    (("export", str(SPECS / "tiny.toml"), "--format", "libvirt", "-o", "nodir/tiny.xml"),
     ["vmrun: error: cannot write nodir/tiny.xml: nodir is not a directory", "vmrun: hint: mkdir -p nodir"]),
])
def test_an_output_that_cannot_be_written_is_exit_2_naming_it(
        capsys: pytest.CaptureFixture[str], in_tmp: Path, args: tuple[str, ...], said: list[str]) -> None:
    (in_tmp / "adir").mkdir()
    exit_code, out, lines = run(capsys, in_tmp / "roots", *args)
    assert (exit_code, out) == (2, "")
    assert [line for line in lines if line.startswith(("vmrun: error", "vmrun: hint"))] == said
    assert sorted(path.name for path in in_tmp.iterdir()) == ["adir"]


def test_init_with_a_base_writes_nothing_when_the_spec_cannot_be_written(
        capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    (in_tmp / "vms").mkdir()
    (in_tmp / "vms/web.toml").mkdir()
    exit_code, _, _ = run(capsys, in_tmp / "roots", "init", "web", "-o", "vms/web.toml", "--base", "cloud.qcow2",
                          "--force")
    assert exit_code == 2
    assert [path.name for path in (in_tmp / "vms").iterdir()] == ["web.toml"]


def test_init_of_an_invalid_name_gives_the_hint_once(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    exit_code, _, lines = run(capsys, in_tmp / "roots", "init", "Web")
    assert exit_code == 2
    assert lines == ["vmrun: error: name: 'Web' is not a valid VM name",
                     "vmrun: hint: use 1-63 of a-z, 0-9 and '-'"]


def test_validate_of_a_directory_checks_its_specs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs/bad.toml").write_text('name = "Bad"\n[boot]\nkernel = "k"\n')
    (tmp_path / "specs/good.toml").write_text('name = "good"\n[boot]\nkernel = "k"\n')
    exit_code, _, lines = run(capsys, tmp_path, "validate", str(tmp_path / "specs"))
    assert exit_code == 2
    assert lines[0] == f"vmrun: {tmp_path}/specs/good.toml: ok"
    assert lines[1].startswith(f"vmrun: error: {tmp_path}/specs/bad.toml: name: 'Bad' is not a valid VM name")
    assert run(capsys, tmp_path, "validate", str(SPECS))[0] == 0
