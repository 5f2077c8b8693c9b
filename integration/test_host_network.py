"""Preflight on this machine's real network stack: taps it creates, checks and deletes; a bridge the test makes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmrun.errors import PreflightError
from vmrun.host.facts import HostFacts, kvm_verdict
from vmrun.host.system import Host
from vmrun.preflight.apply import apply_plan, undo_changes
from vmrun.preflight.network import IFF_MULTI_QUEUE
from vmrun.preflight.plan import plan_preflight
from vmrun.spec.load import parse_spec
from vmrun.spec.model import Spec

FACTS = HostFacts(kvm_usable=False, kvm_reason="tcg here", drop_privileges=True, qemu_version="7.2.0")
SUFFIX = str(os.getpid())[-5:]
TAP, BRIDGE = f"vmrt{SUFFIX}", f"vmrtbr{SUFFIX}"  # test-only names, at most 15 bytes


def nic_spec(**nic: object) -> Spec:
    data = {"name": "net", "boot": {"kernel": "/etc/hostname"}, "host": {"user": "nobody"},
            "machine": {"cpus": 4}, "nics": [{"id": "n0", "tap": TAP, **nic}]}
    return parse_spec(data, source="t", base=Path("/"))


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def net(name: str) -> Path:
    return Path("/sys/class/net") / name


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    yield
    for name in (TAP, BRIDGE):
        if net(name).exists():
            subprocess.run(["ip", "link", "del", name], check=False)
            pytest.fail(f"{name} was left behind")


def test_real_host_creates_a_multi_queue_tap_and_deletes_it_on_undo() -> None:
    host = Host()
    applied = apply_plan(plan_preflight(nic_spec(queues=4), host, FACTS), host)
    assert int((net(TAP) / "tun_flags").read_text(), 16) & IFF_MULTI_QUEUE
    assert (net(TAP) / "owner").read_text().strip() == "65534"  # created for qemu's user
    assert undo_changes(applied, host) == []
    assert not net(TAP).exists()


def test_real_host_existing_plain_tap_with_queues_fails_with_the_fix() -> None:
    ip("tuntap", "add", "dev", TAP, "mode", "tap")
    try:
        plan = plan_preflight(nic_spec(queues=2), Host(), FACTS)
        [failure] = plan.failures
        assert failure.message.startswith(f"tap {TAP} has no multi_queue flag but queues = 2; recreate it:")
        with pytest.raises(PreflightError):
            apply_plan(plan, Host())
    finally:
        ip("tuntap", "del", "dev", TAP, "mode", "tap")


def test_real_host_attaches_the_tap_to_a_bridge_and_detaches_it() -> None:
    ip("link", "add", BRIDGE, "type", "bridge")
    try:
        host = Host()
        applied = apply_plan(plan_preflight(nic_spec(queues=2, bridge=BRIDGE), host, FACTS), host)
        assert os.readlink(net(TAP) / "master").endswith(f"/{BRIDGE}")
        assert undo_changes(applied, host) == []
        assert not net(TAP).exists()
    finally:
        ip("link", "del", BRIDGE)


def test_real_host_missing_bridge_is_named() -> None:
    plan = plan_preflight(nic_spec(bridge=BRIDGE), Host(), FACTS)
    assert [f.message for f in plan.failures] == [f"bridge {BRIDGE} does not exist (ip link add {BRIDGE} type bridge)"]


def test_real_host_accelerator_here_is_tcg_with_the_reason() -> None:
    usable, reason = kvm_verdict(Host())
    if Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists():
        pytest.skip("this host has hardware KVM (e.g. the GitHub Actions runner)")
    assert not usable and "TCG" in reason
