"""`vmrun export --format libvirt` run by a real libvirtd: defined, booted (TCG here), queues read over the agent.

A host whose libvirtd already runs (systemd) lends it and keeps it. In a container without systemd, the
`libvirtd` fixture starts virtlogd and libvirtd itself and stops them afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmrun.guest.hooks import current_combined
from vmrun.spec.load import load_spec

from .conftest import REPO

IMAGES = REPO / "images" / "tiny"
NAME = "vmrun-lv"  # short enough for its tap to keep the readable "<vm>.<nic>" name
URI = "qemu:///system"
VIRSH = ["virsh", "-c", URI]
LIBVIRT_RUNTIME = Path("/run/libvirt")

# The tiny guest, as libvirt's qemu user can reach it: 2 vCPUs, 2 queue pairs, a SCSI disk, a 9p share, the agent.
SPEC = """\
name = "{name}"
[machine]
accel = "tcg"
cpus = 2
memory = "{memory}"
[boot]
kernel = "{images}/vmlinuz"
initrd = "{images}/initrd.gz"
append = "console=ttyS0 quiet"
[[disks]]
id = "data"
path = "{images}/data.raw"
format = "raw"
[[nics]]
id = "net0"
queues = 2
[[shares]]
id = "keymaps"
path = "/usr/share/qemu/keymaps"
tag = "keymaps"
readonly = true
[agent]
enabled = true
"""

pytestmark = pytest.mark.skipif(
    not (IMAGES / "vmlinuz").exists(), reason="tiny guest not built: run integration/tiny-guest/build"
)


def virsh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRSH, *args], capture_output=True, text=True, timeout=timeout)


def wait_until_libvirtd_answers(daemon: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while virsh("version").returncode != 0:
        if daemon.poll() is not None or time.monotonic() > deadline:
            log_text = log.read_text() if log.exists() else "(no log)"
            pytest.fail(f"libvirtd did not come up (exit {daemon.returncode}):\n{log_text}")
        time.sleep(0.2)


# libvirtd's own view of the host, in a private mount namespace; the host's files are never touched.
# qemu.conf: the qemu driver reads only /etc/libvirt/qemu.conf. Without systemd, libvirt would make each VM's
# cgroups itself, which a container's cgroup tree may refuse (and which it leaves behind), and it would copy
# /dev entries into a mount namespace per VM, which cannot take the /dev/kvm stand-in below.
# /dev/kvm: the VM runs under TCG. Where /dev/kvm is root-only (a container without udev), libvirt finds KVM
# when it probes qemu but not for its qemu user, so it probes qemu again on every call (a minute per `define`
# on a loaded 2-core machine); an empty file in its place gives both the same answer.
PRIVATE_QEMU_CONF = "cgroup_controllers = [ ]\nnamespaces = [ ]\n"
PRIVATE_VIEW = (
    'mount --bind "$1" /etc/libvirt/qemu.conf && { [ ! -e /dev/kvm ] || mount --bind "$2" /dev/kvm; } '
    '&& shift 2 && exec "$@"'
)


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if virsh("version").returncode == 0:
        yield  # the host's own libvirtd: used, never stopped
        return
    config = tmp_path_factory.mktemp("libvirtd")
    runtime_was_there = LIBVIRT_RUNTIME.exists()
    for name in ("virtlogd", "libvirtd"):
        (config / f"{name}.conf").write_text(f'log_outputs = "3:file:{config / name}.log"\n')
    (config / "qemu.conf").write_text(PRIVATE_QEMU_CONF)
    (config / "no-kvm").touch(mode=0o600)
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        daemons.append(subprocess.Popen(
            ["virtlogd", "--config", str(config / "virtlogd.conf"), "--pid-file", str(config / "virtlogd.pid")]
        ))
        daemons.append(subprocess.Popen([
            "unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_VIEW, "sh",
            str(config / "qemu.conf"), str(config / "no-kvm"),
            "libvirtd", "--config", str(config / "libvirtd.conf"), "--pid-file", str(config / "libvirtd.pid"),
        ]))
        # A first start probes qemu's capabilities (seconds); later starts read libvirt's cache.
        wait_until_libvirtd_answers(daemons[-1], config / "libvirtd.log", timeout=120)
        yield
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(timeout=60)
        if not runtime_was_there:
            shutil.rmtree(LIBVIRT_RUNTIME, ignore_errors=True)


def agent(command: str, **arguments: Any) -> Any:
    """One guest agent command through libvirt's own agent channel."""
    message = {"execute": command, **({"arguments": arguments} if arguments else {})}
    result = virsh("qemu-agent-command", NAME, json.dumps(message))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["return"]


def wait_for_agent(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    ping = json.dumps({"execute": "guest-ping"})
    while virsh("qemu-agent-command", NAME, ping).returncode != 0:
        assert time.monotonic() < deadline, f"the guest agent did not answer within {timeout:.0f} s"
        time.sleep(0.5)


def guest_run(*argv: str) -> str:
    """guest-exec, then guest-exec-status until the command has exited; its stdout, decoded."""
    pid = agent("guest-exec", path=argv[0], arg=list(argv[1:]), **{"capture-output": True})["pid"]
    while not (status := agent("guest-exec-status", pid=pid))["exited"]:
        time.sleep(0.1)
    assert status["exitcode"] == 0, status
    return base64.b64decode(status.get("out-data", "")).decode()


def domain_state() -> str:
    shown = virsh("domstate", NAME)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.strip()


def tap_queues(tap: str) -> str | None:
    """The tap's `ip -d link` details, or None when it does not exist."""
    shown = subprocess.run(["ip", "-d", "link", "show", "dev", tap], capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else None


def test_libvirt_runs_the_exported_tiny_guest_with_its_queue_pairs_disk_and_share(
    libvirtd: None, reachable_tmp: Path, tmp_path: Path
) -> None:
    # libvirt runs qemu as its own user (libvirt-qemu), who cannot reach the build cache under /root.
    for image in ("vmlinuz", "initrd.gz"):
        shutil.copyfile(IMAGES / image, reachable_tmp / image)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(reachable_tmp / "data.raw"), "64M"], check=True)
    spec_path = tmp_path / "libvirt.toml"
    spec_path.write_text(SPEC.format(name=NAME, memory="256M", images=reachable_tmp))
    spec = load_spec(spec_path)
    [tap] = [nic.host_tap for nic in spec.nics]
    assert tap == f"{NAME}.net0"

    def export_and_define(memory: str) -> None:
        spec_path.write_text(SPEC.format(name=NAME, memory=memory, images=reachable_tmp))
        export = subprocess.run(
            [sys.executable, "-m", "vmrun", "export", str(spec_path), "--format", "libvirt", "--define"],
            capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "LIBVIRT_DEFAULT_URI": URI},
        )
        assert export.returncode == 0, export.stderr
        assert export.stderr.splitlines()[-1] == (
            f"vmrun: defined the libvirt domain {NAME}; start it with: virsh start {NAME}")
        assert domain_state() == "shut off"

    assert virsh("dominfo", NAME).returncode != 0, f"a libvirt domain {NAME} exists already; not touching it"
    try:
        export_and_define("192M")
        # An edited spec exported again replaces the domain (same name, same uuid) rather than clashing with it.
        export_and_define("256M")
        info = dict(line.split(":", 1) for line in virsh("dominfo", NAME).stdout.splitlines() if ":" in line)
        assert (info["Max memory"].strip(), info["CPU(s)"].strip(), info["State"].strip()) == (
            "262144 KiB", "2", "shut off")
        started = virsh("start", NAME)
        assert started.returncode == 0, started.stderr
        assert domain_state() == "running"
        wait_for_agent(timeout=spec.agent.timeout)
        assert domain_state() == "running"
        # libvirt made the tap under vmrun's name, multiqueue as vmrun's preflight would.
        assert "multi_queue" in (tap_queues(tap) or "").split()
        assert current_combined(guest_run("ethtool", "-l", "eth0")) == 2
        # The disk is a LUN (target 0) behind virtio-scsi, the share qemu's keymaps over 9p.
        assert guest_run("ls", "/sys/block") == "sda\n"
        assert "/host0/target0:0:0/0:0:0:0/block/sda" in guest_run("readlink", "-f", "/sys/block/sda")
        assert guest_run("cat", "/sys/block/sda/device/model") == "QEMU HARDDISK   \n"
        assert guest_run("cat", "/mnt/keymaps/en-us") == Path("/usr/share/qemu/keymaps/en-us").read_text()
        destroyed = virsh("destroy", NAME)
        assert destroyed.returncode == 0, destroyed.stderr
        assert domain_state() == "shut off"
    finally:
        virsh("destroy", NAME)  # fails harmlessly when the domain never started or is stopped already
        undefined = virsh("undefine", NAME)  # fails (and says why) only when it was never defined
        Path(f"/var/log/libvirt/qemu/{NAME}.log").unlink(missing_ok=True)
    assert undefined.returncode == 0, undefined.stderr
    assert tap_queues(tap) is None, f"libvirt left the tap {tap} behind"
