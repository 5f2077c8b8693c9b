"""Base images by URL, from a real HTTP server (http.server in a thread, counting its requests): a verified image
boots through an overlay on its cached file, a second `up` downloads nothing, two `up`s that share it
download it once, `image rm` cannot take it from an `up` that is about to build on it; a wrong digest, a
truncated body, a 404 or a server that drips is exit 4 with nothing left in the cache."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

import pytest

from vmrun.cli.main import main
from vmrun.run import imagecache

from .conftest import REPO, Vmrun

MakeSpec = Callable[..., Path]


class Served:
    """What the server serves and what it was asked: per path, its body and how to misbehave."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.truncate: set[str] = set()  # sends half the body, then closes (Content-Length says all of it)
        self.truncate_once: set[str] = set()  # the same, the first time only; takes a Range after that
        self.redirects: dict[str, str] = {}
        self.no_length: set[str] = set()  # no Content-Length: the body ends when the connection does
        self.drip: set[str] = set()  # 64 bytes every 0.1 s, for 10 s at most (640 B/s)
        self.hung_up = threading.Event()  # set: a client hung up on a drip
        self.requests: list[tuple[str, str | None]] = []  # (path, its Range header)
        self.hold = threading.Event()  # cleared: the first request for a body waits until it is set
        self.hold.set()
        self.lock = threading.Lock()

    def asked(self, path: str) -> int:
        with self.lock:
            return sum(1 for asked, _ in self.requests if asked == path)


def handler_for(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            with served.lock:
                served.requests.append((self.path, self.headers.get("Range")))
                first = sum(1 for asked, _ in served.requests if asked == self.path) == 1
            if self.path in served.redirects:
                self.send_response(302)
                self.send_header("Location", served.redirects[self.path])
                self.end_headers()
                return
            body = served.bodies.get(self.path)
            if body is None:
                self.send_error(404)
                return
            if self.path in served.drip:
                self.drip(body)
                return
            if first:
                served.hold.wait(timeout=120)
            start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-"))[1])  # type: ignore[index]
            resumable = self.path in served.truncate_once and start
            self.send_response(206 if resumable else 200)
            if resumable:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                start = 0
            if self.path not in served.no_length:
                self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut = self.path in served.truncate or (self.path in served.truncate_once and first)
            self.wfile.write(body[start:len(body) // 2] if cut else body[start:])

        def drip(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            deadline = time.monotonic() + 10
            try:
                for offset in range(0, len(body), 64):
                    if time.monotonic() > deadline:
                        return
                    self.wfile.write(body[offset:offset + 64])
                    time.sleep(0.1)
            except OSError:
                served.hung_up.set()

        def log_message(self, *_: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[Served, str]]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    served.hold.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def base_image(tmp_path: Path) -> tuple[bytes, str]:
    """A 16 MiB qcow2 base made by qemu-img, and its sha256 digest."""
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    content = path.read_bytes()
    path.unlink()
    return content, "sha256:" + hashlib.sha256(content).hexdigest()


class Offered(NamedTuple):
    """The base image, served at /base.qcow2."""

    served: Served
    address: str
    content: bytes
    digest: str


@pytest.fixture
def offered(server: tuple[Served, str], base_image: tuple[bytes, str]) -> Offered:
    served, address = server
    content, digest = base_image
    served.bodies["/base.qcow2"] = content
    return Offered(served, address, content, digest)


def overlay_on(url: str, digest: str, name: str) -> str:
    """A second disk: an ephemeral overlay (made at up, deleted at down) on the base at url."""
    return f"""
        [[disks]]
        id = "root"
        path = "{name}-root.qcow2"
        format = "qcow2"
        base = "{url}"
        base_digest = "{digest}"
        ephemeral = true
        """


def cached(cache: Path) -> list[str]:
    """What the cache holds: nothing at all after a failed fetch (no partial, no lock, no note)."""
    return sorted(path.name for path in cache.iterdir()) if cache.exists() else []


@pytest.mark.qemu
def test_a_verified_image_boots_through_an_overlay_on_its_cached_file_and_is_fetched_once(
    vmrun: Vmrun, guestless_spec: MakeSpec, server: tuple[Served, str], base_image: tuple[bytes, str],
    reachable_tmp: Path,
) -> None:
    served, address = server
    content, digest = base_image
    served.bodies["/images/base.qcow2"] = content
    cache = reachable_tmp / "cache"
    env = {"VMRUN_CACHE_DIR": str(cache)}
    spec = guestless_spec("web", overlay_on(f"{address}/images/base.qcow2", digest, "web"))
    cached_file = cache / digest.replace(":", "-")
    try:
        up = vmrun("up", str(spec), env=env)
        assert up.returncode == 0, up.stderr
        assert cached_file.read_bytes() == content
        overlay = vmrun.spec_dir / "web-root.qcow2"
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(overlay)],
                                         capture_output=True, text=True, check=True).stdout)
        assert info["full-backing-filename"] == str(cached_file)
        # qemu itself holds the cached base open, through the overlay's backing chain.
        pid = int((vmrun.run_root / "web" / "qemu.pid").read_text())
        assert str(cached_file) in {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        [row] = json.loads(vmrun("image", "list", "--json", env=env).stdout)
        assert (row["digest"], row["used_by"], row["url"]) == (digest, ["web"], f"{address}/images/base.qcow2")
        refused = vmrun("image", "rm", digest, env=env)
        assert refused.returncode == 2 and cached_file.exists()
        assert vmrun("down", "--force", "web").returncode == 0
        again = vmrun("up", str(spec), env=env)
        assert again.returncode == 0, again.stderr
        assert "fetching" not in again.stderr
    finally:
        vmrun("down", "--force", "web")
    assert served.asked("/images/base.qcow2") == 1
    assert vmrun("image", "rm", "--unused", env=env).returncode == 0
    assert cached(cache) == []


@pytest.mark.parametrize(("misbehave", "said"), [
    ("wrong digest", "sha256 digest mismatch"),
    ("truncated", "the transfer ended after {half} of {size} bytes (3 attempts)"),
    ("not found", "the server answered 404"),
    ("redirect to ftp", "vmrun follows redirects to http and https only"),
])
def test_a_failed_fetch_is_exit_4_in_one_line_and_leaves_nothing(
    vmrun: Vmrun, guestless_spec: MakeSpec, server: tuple[Served, str], base_image: tuple[bytes, str],
    reachable_tmp: Path, misbehave: str, said: str,
) -> None:
    served, address = server
    content, digest = base_image
    path = "/base.qcow2"
    if misbehave == "wrong digest":
        served.bodies[path] = content + b"\0"
    elif misbehave == "truncated":
        served.bodies[path] = content
        served.truncate.add(path)
    elif misbehave == "redirect to ftp":
        served.redirects[path] = "ftp://127.0.0.1/base.qcow2"
    cache = reachable_tmp / "cache"
    spec = guestless_spec("web", overlay_on(f"{address}{path}", digest, "web"))
    listing = sorted(path.name for path in vmrun.spec_dir.iterdir() if path.name != "run")
    up = vmrun("up", str(spec), env={"VMRUN_CACHE_DIR": str(cache)})
    errors = [line for line in up.stderr.splitlines() if line.startswith("vmrun: error: ")]
    assert up.returncode == 4, up.stderr
    assert len(errors) == 1 and errors[0].startswith(f"vmrun: error: web: disks[1].base: {address}{path}")
    assert said.format(half=len(content) // 2, size=len(content)) in errors[0]
    assert "Traceback" not in up.stderr
    assert cached(cache) == []
    # No overlay, no state; the vmrun fixture checks that no run directory is left.
    assert sorted(path.name for path in vmrun.spec_dir.iterdir() if path.name != "run") == listing


def test_a_broken_off_transfer_goes_on_from_where_it_stopped(
    vmrun: Vmrun, offered: Offered
) -> None:
    """The server cuts the first response halfway and takes a Range after that; a redirect leads to it."""
    served, address, content, digest = offered
    served.truncate_once.add("/base.qcow2")
    served.redirects["/latest"] = "/base.qcow2"
    pull = vmrun("--cache-dir", str(vmrun.spec_dir / "cache"), "image", "pull", f"{address}/latest", "--digest", digest)
    assert pull.returncode == 0, pull.stderr
    assert Path(pull.stdout.strip()).read_bytes() == content
    assert served.requests == [("/latest", None), ("/base.qcow2", None), ("/latest", f"bytes={len(content) // 2}-"),
                               ("/base.qcow2", f"bytes={len(content) // 2}-")]


@pytest.mark.qemu
def test_two_ups_that_share_an_image_download_it_once(
    vmrun: Vmrun, guestless_spec: MakeSpec, offered: Offered,
    reachable_tmp: Path,
) -> None:
    """The first up's download is held at the server until the second up says it waits for it; without the
    lock the second would ask the server too."""
    served, address, content, digest = offered
    served.hold.clear()
    env = {**os.environ, "VMRUN_CACHE_DIR": str(reachable_tmp / "cache")}
    specs = [guestless_spec(name, overlay_on(f"{address}/base.qcow2", digest, name)) for name in ("one", "two")]
    logs = [vmrun.spec_dir / f"{name}.log" for name in ("one", "two")]
    ups: list[subprocess.Popen[bytes]] = []
    try:
        for spec, log in zip(specs, logs, strict=True):
            with open(log, "wb") as stderr:
                ups.append(subprocess.Popen(vmrun.argv("up", str(spec)), stderr=stderr, env=env))
            deadline = time.monotonic() + 120
            while not served.requests and time.monotonic() < deadline:  # the first one is downloading
                time.sleep(0.05)
        deadline = time.monotonic() + 120
        while ("waiting for another vmrun that is fetching" not in logs[1].read_text()
               and served.asked("/base.qcow2") < 2 and time.monotonic() < deadline):
            time.sleep(0.05)
        served.hold.set()
        exit_codes = [up.wait(timeout=300) for up in ups]
        assert exit_codes == [0, 0], [log.read_text() for log in logs]
    finally:
        served.hold.set()
        for up in ups:
            up.wait(timeout=300)
        vmrun("down", "--force", "one", "two")
    assert served.asked("/base.qcow2") == 1
    assert "another vmrun fetched it meanwhile" in logs[1].read_text()


def test_a_server_that_drips_is_given_up_as_exit_4_naming_its_rate_and_leaves_nothing(
    offered: Offered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """640 B/s never trips the 60 s read timeout; with a 1 KiB/s floor over 1 s (60 s by default) vmrun hangs
    up on it while it still drips, rather than wait out its body (or, reading whole chunks, its end)."""
    served, address, content, digest = offered
    served.drip.add("/base.qcow2")
    monkeypatch.setattr(imagecache, "SPEED_WINDOW", 1.0)
    monkeypatch.setattr(imagecache, "SPEED_FLOOR", 1024)
    cache = tmp_path / "cache"
    exit_code = main(["--cache-dir", str(cache), "image", "pull", f"{address}/base.qcow2", "--digest", digest])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vmrun: error: ")]
    assert exit_code == 4 and len(errors) == 1, errors
    assert re.fullmatch(rf"vmrun: error: {address}/base.qcow2: the transfer averaged \d+ bytes/s over the last 1 s, "
                        r"below the 1.0 KiB/s vmrun waits for; nothing was kept", errors[0]), errors[0]
    assert served.hung_up.wait(timeout=10)
    assert served.asked("/base.qcow2") == 1  # a stall is not retried
    assert cached(cache) == []


@pytest.mark.qemu
def test_image_rm_cannot_take_an_image_from_an_up_that_is_about_to_build_on_it(
    vmrun: Vmrun, guestless_spec: MakeSpec, offered: Offered,
    reachable_tmp: Path,
) -> None:
    """`up` stopped (SIGSTOP at a crash point) once it has fetched the image, before its state names it: the
    gap in which `image rm` found no VM using the image and deleted it. Let go, the up boots on it."""
    served, address, content, digest = offered
    cache = reachable_tmp / "cache"
    env = {**os.environ, "VMRUN_CACHE_DIR": str(cache)}
    spec = guestless_spec("web", overlay_on(f"{address}/base.qcow2", digest, "web"))
    log = vmrun.spec_dir / "up.log"
    with open(log, "wb") as stderr:
        up = subprocess.Popen(vmrun.argv("up", str(spec), crash_points=True), stderr=stderr, cwd=REPO, env={
            **env, "VMRUN_TEST_KILL_AT": "holding the base images", "VMRUN_TEST_KILL_SIGNAL": "STOP"})
    try:
        deadline = time.monotonic() + 120
        while "SIGSTOP at crash point" not in log.read_text() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "SIGSTOP at crash point" in log.read_text(), log.read_text()
        refused = vmrun("image", "rm", digest, env=env)
        assert refused.returncode == 2, refused.stderr
        assert f"cannot remove {digest}: a vmrun up (or preflight) is using it right now" in refused.stderr
        assert (cache / digest.replace(":", "-")).read_bytes() == content
        up.send_signal(signal.SIGCONT)
        assert up.wait(timeout=300) == 0, log.read_text()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        vmrun("down", "--force", "web")


@pytest.fixture
def small_cache(tmp_path: Path) -> Iterator[Path]:
    """A cache on a 64 KiB tmpfs, smaller than the image."""
    cache = tmp_path / "small"
    cache.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(cache)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield cache
    subprocess.run(["umount", str(cache)], check=True)


@pytest.mark.parametrize(("announced", "said"), [
    (True, "does not fit in the cache"),  # refused before a byte is written
    (False, "cannot write to the cache: No space left on device"),  # found out while writing
])
def test_a_full_disk_is_exit_4_and_leaves_nothing(
    vmrun: Vmrun, offered: Offered, small_cache: Path, announced: bool,
    said: str,
) -> None:
    served, address, content, digest = offered
    if not announced:
        served.no_length.add("/base.qcow2")
    pull = vmrun("--cache-dir", str(small_cache), "image", "pull", f"{address}/base.qcow2", "--digest", digest)
    errors = [line for line in pull.stderr.splitlines() if line.startswith("vmrun: error: ")]
    assert pull.returncode == 4 and len(errors) == 1 and said in errors[0], pull.stderr
    assert cached(small_cache) == []


def test_a_vmrun_killed_mid_download_leaves_a_partial_that_the_next_fetch_clears(
    vmrun: Vmrun, offered: Offered
) -> None:
    served, address, content, digest = offered
    served.drip.add("/base.qcow2")  # slow enough to be killed halfway
    cache = vmrun.spec_dir / "cache"
    pull = subprocess.Popen(vmrun.argv("--cache-dir", str(cache), "image", "pull", f"{address}/base.qcow2",
                                       "--digest", digest), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(path.stat().st_size for path in cache.glob("*.partial")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pull.send_signal(signal.SIGKILL)
        pull.wait(timeout=30)
    assert [name for name in cached(cache) if name.endswith(".partial")], cached(cache)
    served.drip.clear()
    again = vmrun("--cache-dir", str(cache), "image", "pull", f"{address}/base.qcow2", "--digest", digest)
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.strip()).read_bytes() == content
    file_name = digest.replace(":", "-")
    assert cached(cache) == [file_name, f"{file_name}.json", f"{file_name}.used"]  # the image, its URL, its last use
