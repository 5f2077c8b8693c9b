"""`vmrun image prune [DIR...]`: the cache keeps what a spec in the given directories names, what a VM with a
run directory uses and what an `up` is using now; the rest goes, with the `.partial` files of downloads that
no vmrun is doing any more."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from vmrun.run.imagecache import ImageCache
from vmrun.spec.images import parse_digest

from .test_images import URL, cache_listing, errors, pulled, run, running_with, spec_with_base

IN_USE_NOW = "a vmrun up (or preflight) is using it right now"


def test_prune_keeps_what_a_spec_or_a_vm_names_and_removes_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    named, named_path = pulled(capsys, tmp_path, b"named by a spec\n")
    by_invalid, _ = pulled(capsys, tmp_path, b"named by an invalid spec\n")
    used, _ = pulled(capsys, tmp_path, b"used by a VM\n")
    unused, unused_path = pulled(capsys, tmp_path, b"named by nothing\n")
    specs = tmp_path / "specs"
    specs.mkdir()
    spec_with_base(specs, URL, named)
    invalid = spec_with_base(specs, URL, by_invalid, name="db")
    invalid.write_text(invalid.read_text() + "[machine]\ncpus = 0\n")
    running_with(tmp_path, "web", used)
    exit_code, out, lines = run(capsys, tmp_path, "image", "prune", str(specs), "--json")
    assert exit_code == 0, lines
    assert json.loads(out) == {
        "removed": [unused],
        "kept": sorted([{"digest": named, "reason": f"named by {specs}/web.toml"},
                        {"digest": by_invalid, "reason": f"named by {specs}/db.toml"},
                        {"digest": used, "reason": "the base of web"}], key=lambda kept: kept["digest"]),
        "partial_files": [],
        "invalid": [{"spec": str(invalid), "errors": [f"{invalid}: machine.cpus: must be at least 1, got 0"],
                     "hint": None}],
    }
    assert f"vmrun: error: {invalid}: machine.cpus: must be at least 1, got 0" in lines
    assert f"vmrun: {invalid} is invalid: the images it names are kept" in lines
    assert f"vmrun: removed {unused}" in lines
    assert not unused_path.exists() and named_path.exists()
    # Without directories, only the VMs and vmruns at work keep images.
    exit_code, _, lines = run(capsys, tmp_path, "image", "prune")
    assert exit_code == 0 and f"vmrun: removed {named}" in lines and f"vmrun: kept {used}: the base of web" in lines


def test_prune_removes_leftover_partial_files_but_not_a_download_under_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept, path = pulled(capsys, tmp_path, b"kept\n")
    cache = tmp_path / "cache"
    running_with(tmp_path, "web", kept)
    left = cache / f".{path.name}.x1y2.partial"  # a killed vmrun's
    left.write_bytes(b"half")
    other = "sha256:" + "ab" * 32
    under_way = cache / f".{other.replace(':', '-')}.z3.partial"
    under_way.write_bytes(b"a")
    lock = os.open(cache / f".{other.replace(':', '-')}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what a vmrun downloading it holds
        exit_code, out, lines = run(capsys, tmp_path, "image", "prune", "--json")
    finally:
        os.close(lock)
    assert exit_code == 0, lines
    assert json.loads(out)["partial_files"] == [str(left)]
    assert not left.exists() and under_way.exists()
    assert f"vmrun: removed {left} (a download that did not finish)" in lines


def test_prune_keeps_what_an_up_is_using_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest, path = pulled(capsys, tmp_path, b"in use\n")
    image = parse_digest(digest)
    assert image is not None
    with ImageCache(tmp_path / "cache").using(f"file://{tmp_path}/image-{digest[7:15]}.raw", image, print):
        exit_code, out, lines = run(capsys, tmp_path, "image", "prune", "--json")
    assert exit_code == 0 and json.loads(out)["kept"] == [{"digest": digest, "reason": IN_USE_NOW}]
    assert path.exists()


def test_a_spec_that_cannot_be_read_removes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Which images it names is unknown, so none may go."""
    pulled(capsys, tmp_path, b"maybe named\n")
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "broken.toml").write_text("name = \n")
    before = cache_listing(tmp_path)
    exit_code, out, lines = run(capsys, tmp_path, "image", "prune", str(specs))
    assert (exit_code, out) == (2, "")
    assert errors(lines)[0].startswith(f"vmrun: error: {specs}/broken.toml: not valid TOML")
    assert cache_listing(tmp_path) == before
    exit_code, _, lines = run(capsys, tmp_path, "image", "prune", str(tmp_path / "none"))
    assert exit_code == 2 and len(errors(lines)) == 1
