"""User-mode NICs on real qemu: a host port forwarded into the tiny guest with restrict on, and a host port
something else holds named in `up`'s error. (`vmrun ssh` through a forward: test_debian_guest.py.)"""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w

from .conftest import Vmrun
from .test_tiny_guest import IMAGES

GUEST_PORT = 8080
GUEST_ADDRESS = "10.0.2.15/24"  # where qemu's user network sends forwarded connections


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.skipif(not (IMAGES / "vmlinuz").exists(), reason="tiny guest not built: run integration/tiny-guest/build")
def test_a_host_port_reaches_a_guest_listener_and_restrict_keeps_the_guest_in(vmrun: Vmrun) -> None:
    port = free_port()
    spec = vmrun.spec(tomli_w.dumps({
        "name": "tiny-user",
        "machine": {"cpus": 1, "memory": "256M"},
        "boot": {"kernel": str(IMAGES / "vmlinuz"), "initrd": str(IMAGES / "initrd.gz"), "append": "console=ttyS0"},
        "nics": [{"id": "net0", "mode": "user", "restrict": True, "forward": [f"tcp:{port}:{GUEST_PORT}"]}],
    }), "tiny-user.toml")
    up = vmrun("up", str(spec))
    try:
        assert up.returncode == 0, up.stderr
        assert "ethtool" not in up.stderr  # one queue pair: the step has nothing to do on a user-mode NIC
        served = vmrun("exec", "tiny-user", "--", "sh", "-c",
                       f"ip addr add {GUEST_ADDRESS} dev eth0 && mkdir -p /tmp/www && echo served by the guest > "
                       f"/tmp/www/index.html && httpd -p {GUEST_PORT} -h /tmp/www")
        assert served.returncode == 0, served.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=30) as response:
            assert response.read() == b"served by the guest\n"

        # The host's own loopback is 10.0.2.2 to the guest; with restrict on, it does not answer.
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.settimeout(0.5)
            tried = vmrun("exec", "tiny-user", "--", "nc", "-w", "3", "10.0.2.2", str(listener.getsockname()[1]))
            assert tried.returncode != 0, tried
            with pytest.raises(TimeoutError):
                listener.accept()

        [status] = json.loads(vmrun("status", "--json", "tiny-user").stdout)
        assert status["forwards"] == [f"tcp 127.0.0.1:{port} -> guest port {GUEST_PORT}"]
        # The guest's address is inside qemu and nothing forwards port 22: ssh has no way in.
        ssh = vmrun("ssh", "tiny-user", "--", "true")
        assert (ssh.returncode, ssh.stderr.splitlines()[0]) == (
            2, "vmrun: error: tiny-user: no route to the guest's port 22: no user-mode NIC forwards it and the agent "
               "reports no address the host can reach")
    finally:
        down = vmrun("down", "tiny-user")
        assert down.returncode == 0, down.stderr


def test_a_forward_whose_host_port_is_taken_fails_up_naming_it(
    vmrun: Vmrun, guestless_spec: Callable[..., Path]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = guestless_spec("taken", f"""
            [[nics]]
            id = "net0"
            mode = "user"
            forward = ["tcp:{port + 1 if port < 65535 else 1}:80", "tcp:127.0.0.1:{port}:22"]
            """)
        up = vmrun("up", str(spec))
    assert up.returncode == 4, up.stderr
    errors = [line for line in up.stderr.splitlines() if re.match(r"vmrun: (error|hint)", line)]
    assert errors == [
        f"vmrun: error: nics[0].forward[1] (tcp:127.0.0.1:{port}:22): qemu could not listen on host port "
        f"127.0.0.1:{port} (tcp): something else holds it",
        f"vmrun: hint: free the port (ss -lnp 'sport = :{port}' shows who holds it), or forward another one",
    ]
