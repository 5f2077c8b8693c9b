"""Base images by URL without a network: what validate refuses, `init --base URL`, and the cache that
`image pull` (file:// URLs), `image list` and `image rm` manage. integration/test_image_urls.py has HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vmrun.cli.main import main
from vmrun.run.imagecache import ImageCache
from vmrun.spec.images import parse_digest
from vmrun.spec.load import converter, load_spec
from vmrun.state.locations import Places
from vmrun.state.vmstate import VmState, create_run_dir

from .common import unless_it_hangs

URL = "https://cloud.example/debian-12-genericcloud-amd64.qcow2"
SHA256 = "sha256:" + "ab" * 32
SHA512 = "sha512:" + "cd" * 64


def spec_with_base(tmp_path: Path, base: str, digest: str | None = None, name: str = "web") -> Path:
    digest_line = f'base_digest = "{digest}"\n' if digest is not None else ""
    spec = tmp_path / f"{name}.toml"
    spec.write_text(f'name = "{name}"\n[boot]\ndisk = "root"\n[[disks]]\nid = "root"\npath = "{name}.qcow2"\n'
                    f'format = "qcow2"\nbase = "{base}"\n{digest_line}')
    return spec


def run(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[int, str, list[str]]:
    """vmrun in-process with this test's run, state and cache dirs: exit code, stdout, stderr lines."""
    exit_code = main(["--run-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"),
                      "--cache-dir", str(tmp_path / "cache"), *args])
    out, err = capsys.readouterr()
    return exit_code, out, err.splitlines()


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("vmrun: error: ")]


@pytest.mark.parametrize("digest", [SHA256, SHA512, SHA256.upper().replace("SHA256", "sha256")])
def test_a_url_base_with_a_digest_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str], digest: str) -> None:
    exit_code, _, lines = run(capsys, tmp_path, "validate", str(spec_with_base(tmp_path, URL, digest)))
    assert (exit_code, errors(lines)) == (0, [])


@pytest.mark.parametrize(("base", "digest", "path", "said"), [
    (URL, None, "disks[0].base_digest", "required with a URL base"),
    ("http://mirror.example/x.img", None, "disks[0].base_digest", "required with a URL base"),
    (URL, "sha256:abc", "disks[0].base_digest", "a sha256 digest is 64 hex digits"),
    (URL, "sha256:" + "g" * 64, "disks[0].base_digest", "a sha256 digest is 64 hex digits"),
    (URL, SHA256.replace("sha256", "sha512"), "disks[0].base_digest", "a sha512 digest is 128 hex digits"),
    (URL, "md5:" + "a" * 32, "disks[0].base_digest", "is not a digest"),
    (URL, "ab" * 32, "disks[0].base_digest", "is not a digest"),
    ("ftp://mirror.example/x.img", SHA256, "disks[0].base", "scheme 'ftp' is not supported"),
    ("s3://bucket/x.img", SHA256, "disks[0].base", "scheme 's3' is not supported"),
    ("file://images/x.img", SHA256, "disks[0].base", "a file URL names an absolute path"),
    ("https:///x.img", SHA256, "disks[0].base", "names no host"),
    ("images/x.qcow2", SHA256, "disks[0].base_digest", "only applies to a base given by URL"),
])
def test_validate_refuses_what_cannot_be_verified_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], base: str, digest: str | None, path: str, said: str
) -> None:
    spec = spec_with_base(tmp_path, base, digest)
    exit_code, _, lines = run(capsys, tmp_path, "validate", str(spec))
    [error] = errors(lines)
    assert exit_code == 2
    assert error.startswith(f"vmrun: error: {spec}: {path}: ") and said in error


def test_a_url_base_stays_a_url_and_its_digest_is_recorded_with_the_spec(tmp_path: Path) -> None:
    spec = load_spec(spec_with_base(tmp_path, URL, SHA256))
    assert str(spec.disks[0].base) == URL  # not a path relative to the spec (https:/cloud.example/...)
    recorded = converter.unstructure(spec)["disks"][0]
    assert (recorded["base"], recorded["base_digest"]) == (URL, SHA256)
    assert converter.structure(converter.unstructure(spec), type(spec)) == spec


def test_init_with_a_url_writes_a_spec_that_names_it_and_its_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "web.toml"
    exit_code, _, lines = run(capsys, tmp_path, "init", "web", "-o", str(output), "--base", URL)
    assert exit_code == 2 and "--digest is required" in errors(lines)[0] and not output.exists()
    exit_code, _, lines = run(capsys, tmp_path, "init", "web", "-o", str(output), "--base", URL, "--digest", SHA512)
    assert exit_code == 0, lines
    disk = load_spec(output).disks[0]
    assert (str(disk.base), disk.base_digest) == (URL, SHA512)
    assert run(capsys, tmp_path, "validate", str(output))[0] == 0


def pulled(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes) -> tuple[str, Path]:
    """An image pulled into the cache from a file:// URL: its digest and cached path."""
    source = tmp_path / f"image-{hashlib.sha256(content).hexdigest()[:8]}.raw"
    source.write_bytes(content)
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    exit_code, out, lines = run(capsys, tmp_path, "image", "pull", f"file://{source}", "--digest", digest)
    assert exit_code == 0, lines
    return digest, Path(out.strip())


def cache_listing(tmp_path: Path) -> list[str]:
    return sorted(path.name for path in (tmp_path / "cache").iterdir())


def test_pull_keeps_the_image_under_its_digest_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest, path = pulled(capsys, tmp_path, b"an image\n" * 1000)
    assert path == tmp_path / "cache" / digest.replace(":", "-")
    assert path.read_bytes() == b"an image\n" * 1000 and path.stat().st_mode & 0o777 == 0o444
    # Beside it, its note (the URL) and the record of its last use; no lock, no partial left.
    assert cache_listing(tmp_path) == [path.name, f"{path.name}.json", f"{path.name}.used"]


def test_a_wrong_digest_is_exit_4_and_leaves_the_cache_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept, _ = pulled(capsys, tmp_path, b"kept\n")
    before = cache_listing(tmp_path)
    source = tmp_path / "other.raw"
    source.write_bytes(b"not what the digest says\n")
    exit_code, out, lines = run(capsys, tmp_path, "image", "pull", f"file://{source}", "--digest", SHA256)
    [error] = errors(lines)
    assert exit_code == 4 and out == ""
    assert "sha256 digest mismatch" in error and "nothing was kept" in error
    assert cache_listing(tmp_path) == before


def test_a_missing_file_is_exit_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code, _, lines = run(capsys, tmp_path, "image", "pull", f"file://{tmp_path}/none.raw", "--digest", SHA256)
    assert exit_code == 4 and "No such file or directory" in errors(lines)[0]
    assert cache_listing(tmp_path) == []


def test_pull_refuses_a_url_without_a_digest_and_a_spec_with_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, tmp_path, "image", "pull", URL)[0] == 2
    spec = spec_with_base(tmp_path, URL, SHA256)
    assert run(capsys, tmp_path, "image", "pull", str(spec), "--digest", SHA256)[0] == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="a cache owned by another user needs root to make")
def test_a_cache_others_can_write_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cache").mkdir(mode=0o777)
    (tmp_path / "cache").chmod(0o777)
    source = tmp_path / "image.raw"
    source.write_bytes(b"x")
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    exit_code, _, lines = run(capsys, tmp_path, "image", "pull", f"file://{source}", "--digest", digest)
    assert exit_code == 3 and "writable by others" in errors(lines)[0]
    assert cache_listing(tmp_path) == []


def running_with(tmp_path: Path, name: str, digest: str) -> None:
    """A VM with a run directory whose recorded spec has this URL base (as `up` or `preflight` leaves it)."""
    spec = load_spec(spec_with_base(tmp_path, URL, digest, name=name))
    paths = Places(run_root=tmp_path / "run", state_root=tmp_path / "state").of(name)
    create_run_dir(paths, VmState(name=name, spec_path=str(tmp_path / f"{name}.toml"), argv=("qemu",), accel="tcg",
                                  accel_reason="test", spec=converter.unstructure(spec)))


def test_list_shows_each_image_with_its_url_and_the_vms_that_use_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    used, used_path = pulled(capsys, tmp_path, b"used\n")
    unused, _ = pulled(capsys, tmp_path, b"unused\n")
    running_with(tmp_path, "web", used)
    exit_code, out, _ = run(capsys, tmp_path, "image", "list", "--json")
    rows = {row["digest"]: row for row in json.loads(out)}
    assert exit_code == 0 and rows.keys() == {used, unused}
    assert rows[used].pop("fetched") == datetime.fromtimestamp(used_path.stat().st_mtime, UTC).isoformat(
        timespec="seconds")
    assert rows[used].pop("last_used") is not None
    assert rows[used] == {"digest": used, "path": str(used_path), "size": 5, "url": f"file://{tmp_path}/"
                          f"image-{used[7:15]}.raw", "used_by": ["web"]}
    assert rows[unused]["used_by"] == []
    exit_code, out, _ = run(capsys, tmp_path, "image", "list")
    assert exit_code == 0
    assert {line.split()[0][:-1]: line.split()[-2] for line in out.splitlines()} == {used[:19]: "web",
                                                                                     unused[:19]: "unused"}


def test_rm_removes_what_no_vm_uses_and_refuses_what_one_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    used, used_path = pulled(capsys, tmp_path, b"used\n")
    unused, _ = pulled(capsys, tmp_path, b"unused\n")
    other, _ = pulled(capsys, tmp_path, b"other\n")
    running_with(tmp_path, "web", used)
    exit_code, _, lines = run(capsys, tmp_path, "image", "rm", used)
    assert exit_code == 2 and f"{used} is the base of web" in errors(lines)[0]
    assert run(capsys, tmp_path, "image", "rm", "sha256:nothex")[0] == 2
    assert run(capsys, tmp_path, "image", "rm")[0] == 2  # neither digests nor --unused
    assert run(capsys, tmp_path, "image", "rm", other)[0] == 0
    exit_code, _, lines = run(capsys, tmp_path, "image", "rm", other)
    assert exit_code == 2 and "not in the image cache" in errors(lines)[0]
    assert run(capsys, tmp_path, "image", "rm", "--unused")[0] == 0
    assert cache_listing(tmp_path) == [used_path.name, f"{used_path.name}.json", f"{used_path.name}.used"]
    assert unused.replace(":", "-") not in " ".join(cache_listing(tmp_path))


def test_pull_refuses_a_url_with_a_control_character_before_printing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code, _, lines = run(capsys, tmp_path, "image", "pull", "https://cloud.example/\x1b[2Jx.img", "--digest",
                              SHA256)
    assert exit_code == 2 and errors(lines) == ["vmrun: error: 'https://cloud.example/\\x1b[2Jx.img': a URL has no "
                                                "white space or control characters (write a space as %20)"]


def test_a_file_url_naming_a_fifo_is_exit_4_without_waiting_for_a_writer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(tmp_path / "pipe")
    with unless_it_hangs():
        exit_code, _, lines = run(capsys, tmp_path, "image", "pull", f"file://{tmp_path}/pipe", "--digest", SHA256)
    assert exit_code == 4 and errors(lines) == [f"vmrun: error: file://{tmp_path}/pipe: {tmp_path}/pipe is not a "
                                                "regular file"]
    assert cache_listing(tmp_path) == []


def test_a_link_at_an_images_place_in_the_cache_is_replaced_by_the_verified_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = b"the real image\n"
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    unverified = tmp_path / "unverified.raw"
    unverified.write_bytes(b"something else\n")
    (tmp_path / "cache").mkdir(mode=0o755)
    (tmp_path / "cache" / digest.replace(":", "-")).symlink_to(unverified)
    _, path = pulled(capsys, tmp_path, content)
    assert not path.is_symlink() and path.read_bytes() == content
    assert unverified.read_bytes() == b"something else\n"


def test_a_directory_at_an_images_place_in_the_cache_is_exit_4_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "image.raw"
    source.write_bytes(b"x")
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    (tmp_path / "cache" / digest.replace(":", "-")).mkdir(parents=True)
    exit_code, _, lines = run(capsys, tmp_path, "image", "pull", f"file://{source}", "--digest", digest)
    [error] = errors(lines)
    assert exit_code == 4 and "cannot put it in the cache" in error
    assert cache_listing(tmp_path) == [digest.replace(":", "-")]


def test_rm_refuses_an_image_that_a_vmrun_up_holds_until_its_state_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`up` holds the image's lock shared from finding it until its state is written: two such `up`s here,
    one of which is done; the lock file stays while the other holds it, so `rm` still finds it held."""
    content = b"in use\n"
    digest, path = pulled(capsys, tmp_path, content)
    cache = ImageCache(tmp_path / "cache")
    url, image = f"file://{tmp_path}/image-{digest[7:15]}.raw", parse_digest(digest)
    assert image is not None
    with cache.using(url, image, print) as held:
        assert held == path
        with cache.using(url, image, print):
            pass
        exit_code, _, lines = run(capsys, tmp_path, "image", "rm", digest)
        assert exit_code == 2 and errors(lines) == [f"vmrun: error: cannot remove {digest}: a vmrun up (or preflight) "
                                                    "is using it right now"]
        exit_code, _, lines = run(capsys, tmp_path, "image", "rm", "--unused")
        assert exit_code == 0 and f"vmrun: kept {digest}: a vmrun up (or preflight) is using it right now" in lines
        assert path.read_bytes() == content
    assert run(capsys, tmp_path, "image", "rm", digest)[0] == 0
    assert cache_listing(tmp_path) == []  # the last holder took the lock file with it


def test_rm_takes_the_start_of_a_digest_as_image_list_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, first_path = pulled(capsys, tmp_path, b"first\n")
    second, _ = pulled(capsys, tmp_path, b"second\n")
    _, out, _ = run(capsys, tmp_path, "image", "list")
    shown = next(line.split()[0] for line in out.splitlines() if first[:19] in line)
    assert shown == f"{first[:19]}…"
    assert {row["digest"] for row in json.loads(run(capsys, tmp_path, "image", "list", "--json")[1])} == {first, second}
    exit_code, _, lines = run(capsys, tmp_path, "image", "rm", shown)
    assert (exit_code, lines) == (0, [f"vmrun: removed {first}"])
    assert not first_path.exists()
    exit_code, _, lines = run(capsys, tmp_path, "image", "rm", second[7:12])
    assert (exit_code, lines) == (0, [f"vmrun: removed {second}"])


def test_rm_refuses_the_start_of_no_digest_or_of_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Two contents whose digests start with the same hex digit (of 17, two must).
    by_digit: dict[str, bytes] = {}
    for content in (f"{number}\n".encode() for number in range(17)):
        digit = hashlib.sha256(content).hexdigest()[0]
        if digit in by_digit:
            break
        by_digit[digit] = content
    digests = [pulled(capsys, tmp_path, both)[0] for both in (by_digit[digit], content)]
    shared = digit
    matching = ", ".join(sorted(digests))
    exit_code, _, lines = run(capsys, tmp_path, "image", "rm", f"sha256:{shared}")
    assert (exit_code, errors(lines)) == (2, [f"vmrun: error: sha256:{shared} is the start of "
                                              f"{matching.count(',') + 1} cached images' digests: {matching}"])
    exit_code, _, lines = run(capsys, tmp_path, "image", "rm", f"sha512:{shared}")
    assert (exit_code, errors(lines)) == (2, [f"vmrun: error: no cached image's digest starts with sha512:{shared}"])
    assert len(cache_listing(tmp_path)) == 6  # each image, its note and its last use


def test_list_shows_when_each_image_was_fetched_and_last_handed_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image is used when `up` or `image pull` hands it out, fetched or found; one that an older vmrun
    left in the cache was never seen used."""
    content = b"old\n"
    digest, path = pulled(capsys, tmp_path, content)
    old = "sha256:" + hashlib.sha256(b"older\n").hexdigest()
    older = tmp_path / "cache" / old.replace(":", "-")
    older.write_bytes(b"older\n")
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    os.utime(older, (hour_ago - 2 * 86400, hour_ago - 2 * 86400))
    rows = {row["digest"]: row for row in json.loads(run(capsys, tmp_path, "image", "list", "--json")[1])}
    assert rows[old]["last_used"] is None
    first_use = datetime.fromisoformat(rows[digest]["last_used"]).timestamp()
    assert time.time() - 5 < first_use <= time.time()
    monkeypatch.setattr(time, "time", lambda: first_use + 7210)
    exit_code, out, _ = run(capsys, tmp_path, "image", "list")
    assert exit_code == 0
    lines = {line.split()[0][:-1]: line for line in out.splitlines()}
    assert "fetched 3h ago, last used 2h ago" in lines[digest[:19]], out
    assert "fetched 2d ago, never used" in lines[old[:19]], out
    monkeypatch.undo()
    assert run(capsys, tmp_path, "image", "pull", f"file://{tmp_path}/image-{digest[7:15]}.raw", "--digest",
               digest)[0] == 0
    listed = json.loads(run(capsys, tmp_path, "image", "list", "--json")[1])
    [again] = [row for row in listed if row["digest"] == digest]
    assert again["last_used"] >= rows[digest]["last_used"]
    assert run(capsys, tmp_path, "image", "rm", digest, old)[0] == 0
    assert cache_listing(tmp_path) == []  # the record of its use went with it
