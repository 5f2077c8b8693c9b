"""The newcomer's first day, end to end: the Debian image served over local HTTP stands in for a cloud image;
`init --base URL --digest` writes a spec that `up` boots unedited (a user-mode NIC, the SSH forward on a port
vmrun picks), `vmrun ssh` gets in with the key init put into the user-data, `status` shows the forward, the
console log is still readable after `down`, and `image prune` keeps the base while the spec names it. One
boot: 50-80 s under TCG on an idle host."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import REPO, Vmrun

IMAGE = REPO / "images" / "debian" / "debian-12.qcow2"
NAME = "web"

pytestmark = pytest.mark.skipif(
    not IMAGE.exists(), reason=f"Debian guest not built: run integration/debian-guest/build ({IMAGE} is missing)"
)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def cloud_image() -> Iterator[tuple[str, str]]:
    """The image's URL on a local HTTP server, and its sha256 digest (as a cloud's SHA256SUMS would give it)."""
    digest = hashlib.sha256()
    with open(IMAGE, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(IMAGE.resolve().parent)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{IMAGE.resolve().name}", f"sha256:{digest.hexdigest()}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def newcomer_home(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway home with an SSH key in it: init reads the invoking user's keys under $HOME, as the shell's
    `~` and Lima do."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "newcomer", "-f", str(key)], check=True)
    return home, key


def test_a_cloud_image_by_url_boots_unedited_and_ssh_gets_in(
    vmrun: Vmrun, reachable_tmp: Path, cloud_image: tuple[str, str], newcomer_home: tuple[Path, Path]
) -> None:
    url, digest = cloud_image
    home, key = newcomer_home
    env = {"VMRUN_CACHE_DIR": str(reachable_tmp / "cache")}
    spec = reachable_tmp / f"{NAME}.toml"  # qemu runs as another user: the overlay beside it must be reachable
    as_newcomer = {**env, "HOME": str(home), "SUDO_USER": ""}
    init = vmrun("init", NAME, "--base", url, "--digest", digest, "-o", str(spec), env=as_newcomer)
    assert init.returncode == 0, init.stderr
    assert "1 SSH key(s)" in init.stderr, init.stderr
    started = time.monotonic()
    try:
        up = vmrun("up", str(spec), env=env, timeout=900)
        assert up.returncode == 0, up.stderr
        print(f"up took {time.monotonic() - started:.0f} s")
        [status] = json.loads(vmrun("status", "--json", NAME).stdout)
        [forward] = status["forwards"]
        port = re.fullmatch(r"tcp 127\.0\.0\.1:(\d+) -> guest port 22", forward)
        assert port is not None, forward
        shown = vmrun("status", NAME)
        assert shown.returncode == 0 and forward in shown.stdout, shown.stdout
        [image] = json.loads(vmrun("image", "list", "--json", env=env).stdout)
        assert (image["digest"], image["url"], image["used_by"]) == (digest, url, [NAME])
        assert image["last_used"] is not None
        # The agent answers before sshd listens and cloud-init has made the user: a newcomer would try again.
        deadline = time.monotonic() + 300
        while True:
            ssh = vmrun("ssh", "-i", str(key), NAME, "--", "cat", "/etc/hostname", timeout=120)
            if ssh.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert (ssh.returncode, ssh.stdout) == (0, f"{NAME}\n"), ssh.stderr
    finally:
        down = vmrun("down", NAME, "--timeout", "120", env=env)
    assert down.returncode == 0, down.stderr
    logs = vmrun("logs", NAME)
    assert logs.returncode == 0 and "login:" in logs.stdout, logs.stderr
    # Down, the VM uses its base no more, but its spec still names it: prune keeps it for the next `up`.
    pruned = vmrun("image", "prune", str(reachable_tmp), "--json", env=env)
    assert json.loads(pruned.stdout)["kept"] == [{"digest": digest, "reason": f"named by {spec}"}], pruned.stderr
    pruned = vmrun("image", "prune", "--json", env=env)
    assert json.loads(pruned.stdout)["removed"] == [digest], pruned.stderr
    assert not (reachable_tmp / "cache" / digest.replace(":", "-")).exists()
