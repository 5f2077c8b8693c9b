"""The promise "validate ok means qemu accepts it", with real qemu as the oracle.

Hypothesis draws valid specs (disks on real image files, shares on real directories, both with commas and
spaces in their paths; NICs on real taps, multiqueue ones included, and user-mode NICs forwarding free host
ports; odd-but-legal ids, tags and names).
Each is validated from its TOML file, rendered for this host, and started paused (-S) in the foreground:
qemu accepted it when QMP answers query-status. Left out: VFIO (needs hardware), passthrough disks (need
a block device), bridges (preflight's, qemu never sees them). Render's -daemonize and privilege drop go,
as this test supervises qemu itself, as root.

CI runs a sample; `make fuzz` sets VMRUN_ORACLE_EXAMPLES.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from tests.specgen import Files, valid_specs
from vmrun.errors import LaunchError, SpecError
from vmrun.host.facts import HostFacts, gather_facts
from vmrun.host.system import Host
from vmrun.preflight.plan import Status, inspect_accel
from vmrun.qemu.monitor import Monitor
from vmrun.qemu.render import render
from vmrun.spec.check import load_valid_spec
from vmrun.spec.model import Firmware, Spec
from vmrun.spec.usernet import is_user
from vmrun.state.locations import RunPaths

from .conftest import REPO

pytestmark = pytest.mark.qemu

EXAMPLES = int(os.environ.get("VMRUN_ORACLE_EXAMPLES", "0")) or 100
PREFIX = "chk"  # this test's VMs and taps; nothing else on the host is touched
PRIVILEGE_OPTIONS = ("-runas", "-run-with")
START_TIMEOUT = 60.0  # 255 vCPUs under TCG take ~8 s to set up


def qemu_argv(spec: Spec, facts: HostFacts, paths: RunPaths) -> list[str]:
    """render's argv, supervised here: no -daemonize, no privilege drop, paused before the guest runs."""
    argv, rendered = [], iter(render(spec, facts, paths))
    for arg in rendered:
        if arg in PRIVILEGE_OPTIONS:
            next(rendered)
        elif arg != "-daemonize":
            argv.append(arg)
    return [*argv, "-S"]


class Taps:
    """Taps made for one qemu run, deleted afterwards; a name that exists already is not ours to use."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.made: list[list[str]] = []

    def add(self, name: str, *, multi_queue: bool) -> None:
        mode = ["mode", "tap", *(["multi_queue"] if multi_queue else [])]
        assert not self.host.exists(f"/sys/class/net/{name}"), f"tap {name} exists already: not this test's"
        self.host.run(["ip", "tuntap", "add", "dev", name, *mode])
        self.made.append(["ip", "tuntap", "del", "dev", name, *mode])

    def delete_all(self) -> None:
        for delete in reversed(self.made):
            self.host.run(delete)
        self.made.clear()


def query_status(process: subprocess.Popen[bytes], paths: RunPaths) -> str | None:
    """qemu's run state once QMP answers (every device is created by then), None if qemu exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        # The socket appears before qemu listens on it, and long before the main loop answers.
        with Monitor(paths.qmp_socket) as monitor:
            try:
                monitor.connect(timeout=max(1.0, deadline - time.monotonic()))
            except LaunchError:
                time.sleep(0.01)
                continue
            status = monitor.status()
            monitor.quit()
            return status
    return None


def start_paused(argv: list[str], paths: RunPaths) -> None:
    """Start qemu paused, ask its state over QMP, quit; qemu is gone afterwards whatever happened."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status = query_status(process, paths)
        code = process.wait(timeout=30)
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        assert status == "prelaunch", f"qemu refused a valid spec (exit {code}): {stderr}\nargv: {argv}"
        assert code == 0, f"qemu exit {code} after quit: {stderr}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def free_ports(count: int) -> tuple[int, ...]:
    """Host ports nothing listens on now (on any address, for tcp and udp), for the forwards the specs draw."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("0.0.0.0", 0))
        ports = tuple(int(probe.getsockname()[1]) for probe in probes)
    for port in ports:
        with socket.socket(type=socket.SOCK_DGRAM) as udp:
            udp.bind(("0.0.0.0", port))  # raises when the port is taken for udp: the fixture fails, not a spec
    return ports


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    base = Path(tmp_path_factory.mktemp("oracle"))
    images = base / "images, with a comma"
    images.mkdir()
    raw = (images / "a.raw", images / "b c,d.raw", images / "e.raw")
    qcow2 = (images / "f.qcow2", images / "g, h.qcow2", images / "i.qcow2")
    for path in raw:
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path), "1M"], check=True)
    for path in qcow2:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    shares = (base / "share", base / "share, with a comma", base / "a,,b c")
    for share in shares:
        share.mkdir()
    kernel, initrd = REPO / "images/tiny/vmlinuz", REPO / "images/tiny/initrd.gz"
    if not kernel.exists():
        pytest.skip("no tiny guest kernel: run integration/tiny-guest/build")
    yield Files(raw_images=raw, qcow2_images=qcow2, share_dirs=shares, kernel=kernel, initrd=initrd,
                name_prefix=PREFIX, tap_prefix=PREFIX, host_only=True,
                vhost_net=Host().can_open("/dev/vhost-net"), forward_ports=free_ports(4))
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def facts() -> HostFacts:
    return gather_facts(Host(), "qemu-system-x86_64")


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_valid_spec_starts_in_qemu(files: Files, facts: HostFacts, tmp_path_factory: pytest.TempPathFactory,
                                         data: st.DataObject) -> None:
    document: dict[str, Any] = data.draw(valid_specs(files))
    work = tmp_path_factory.mktemp("vm")
    spec_file = work / "spec.toml"
    spec_file.write_text(tomli_w.dumps(document))
    try:
        spec = load_valid_spec(spec_file)
    except SpecError:
        reject()  # one of the limits validate keeps: qemu's word on those is in tests/test_check.py
    if any(check.status is Status.FAIL for check in inspect_accel(spec, facts)):
        reject()  # accel = "auto" on a TCG host: preflight refuses what TCG cannot run
    paths = RunPaths(run_dir=work / "run", state_dir=work / "state")
    paths.run_dir.mkdir(mode=0o700)
    if spec.boot.firmware is Firmware.UEFI:
        paths.state_dir.mkdir()
        shutil.copy(facts.ovmf_vars_template, paths.uefi_vars)
    taps = Taps(Host())
    try:
        for nic in (nic for nic in spec.nics if not is_user(nic)):
            taps.add(nic.host_tap, multi_queue=nic.queues > 1)
        start_paused(qemu_argv(spec, facts, paths), paths)
    finally:
        taps.delete_all()
        shutil.rmtree(work)
