"""Drift: every field of a spec as `vmrun diff` says it changed, the seed and the argv; and the host side
(taps, bridges, /dev/vfio/N, KSM) on fake host trees."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from vmrun.host.facts import HostFacts
from vmrun.preflight.apply import apply_plan
from vmrun.preflight.plan import plan_preflight
from vmrun.spec.load import parse_spec
from vmrun.spec.model import Spec
from vmrun.state.drift import Configuration, differences, spec_differences
from vmrun.state.hostdrift import host_differences
from vmrun.units import MIB

from .common import REPO
from .fakehost import FakeHost, FakePci, add_bridge, attach, build_host_tree, put

# A spec that sets every field (each optional one to a value), so each can be changed on its own.
EVERY_FIELD: dict[str, Any] = {
    "name": "web",
    "description": "a web server",
    "machine": {"type": "q35", "accel": "tcg", "cpus": 4, "memory": "2G", "cpu_model": "max",
                "hugepages": "2M", "vcpu_pin": [0, 1, 2, 3], "emulator_pin": [0], "io_thread": True, "numa_node": 0},
    "boot": {"kernel": "vmlinuz", "initrd": "initrd.gz", "append": "console=ttyS0", "disk": "root",
             "firmware": "bios"},
    "disks": [{"id": "root", "path": "root.qcow2", "format": "qcow2", "size": "10G", "cache": "none",
               "aio": "native", "discard": True, "readonly": False, "passthrough": False, "base": "base.qcow2",
               "base_digest": "sha256:" + "0" * 64, "ephemeral": False}],
    "nics": [{"id": "net0", "tap": "tap0", "bridge": "br0", "queues": 2, "vhost": "auto",
              "mac": "52:54:00:12:34:56", "mode": "tap", "forward": ["tcp:2222:22"], "restrict": False}],
    "shares": [{"id": "data", "path": "/srv/data", "tag": "data", "security_model": "mapped-xattr",
                "readonly": True}],
    "vfio": [{"id": "nvme0", "host": "0000:01:00.0"}],
    "cloud_init": {"user_data": "user-data.yaml", "network_config": "net.yaml", "meta_data": {"a": "b"}},
    "agent": {"enabled": True, "timeout": "2m"},
    "post_boot": [{"run": ["true"], "timeout": "1m"}],
    "host": {"user": "vmrun", "allow_root": False, "ksm": True},
    "qemu": {"binary": "qemu-system-x86_64", "extra_args": ["-device", "virtio-rng-pci"]},
    "kubevirt": {"namespace": "vms", "run_strategy": "Manual", "secure_boot": True, "kernel_image": "k:1",
                 "live_migrate": True,
                 "disks": {"root": {"pvc": "root"}}, "nics": {"net0": {"network": "br0"}},
                 "vfio": {"nvme0": {"device_name": "a.com/b"}}, "shares": {"data": {"pvc": "data"}}},
}
# Editing these changes neither qemu's argv nor the host: a running VM stays up to date.
KUBEVIRT_FIELDS = tuple(f"kubevirt.{key}" for key in EVERY_FIELD["kubevirt"])
NO_RESTART = ("description", "agent.timeout", "post_boot[0].run", "post_boot[0].timeout", *KUBEVIRT_FIELDS)


def spec_of(data: dict[str, Any]) -> Spec:
    return parse_spec(data, source="t", base=Path("/specs"))


def changed(value: Any) -> Any:
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, enum.Enum):
        return next(member for member in type(value) if member != value)
    if isinstance(value, int):
        return value + MIB
    if isinstance(value, float):
        return value + 1
    if isinstance(value, Path):
        return value.with_name(value.name + "-new")
    if isinstance(value, str):
        return value + "-new"
    if isinstance(value, tuple):
        return (*value, "-new")
    if isinstance(value, dict):
        return {**value, "new": "value"}
    raise AssertionError(f"no change known for {value!r}")


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, tuple[str | int, ...]]]:
    """(spec path, attribute steps) of every field below value that is not itself a section or a device."""
    if attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from ((p, (field.name, *steps)) for p, steps in
                        leaves(getattr(value, field.name), f"{path}.{field.name}" if path else field.name))
    elif isinstance(value, tuple) and value and attrs.has(type(value[0])):
        for index, item in enumerate(value):
            yield from ((p, (index, *steps)) for p, steps in leaves(item, f"{path}[{index}]"))
    else:
        yield path, ()


def evolved(value: Any, steps: tuple[str | int, ...]) -> Any:
    if not steps:
        return changed(value)
    step, rest = steps[0], steps[1:]
    if isinstance(step, int):
        return tuple(evolved(item, rest) if index == step else item for index, item in enumerate(value))
    return attrs.evolve(value, **{step: evolved(getattr(value, step), rest)})


def every_field() -> list[tuple[str, tuple[str | int, ...]]]:
    return list(leaves(spec_of(EVERY_FIELD)))


def test_the_spec_sets_every_field() -> None:
    spec = spec_of(EVERY_FIELD)
    assert [path for path, _ in every_field() if _value_at(spec, path) is None] == []
    assert len(every_field()) == 66  # one per field of the spec model: a new field must join EVERY_FIELD


def _value_at(spec: Spec, path: str) -> Any:
    steps = dict(every_field())[path]
    value: Any = spec
    for step in steps:
        value = value[step] if isinstance(step, int) else getattr(value, step)
    return value


@pytest.mark.parametrize(("path", "steps"), every_field(), ids=[path for path, _ in every_field()])
def test_a_change_to_any_field_is_named_by_its_path_unless_it_needs_no_restart(
    path: str, steps: tuple[str | int, ...]
) -> None:
    old = spec_of(EVERY_FIELD)
    lines = spec_differences(old, evolved(old, steps))
    if path in NO_RESTART:
        assert lines == []
    else:
        [line] = lines
        said_path, said = line.split(": ", 1)
        before, after = said.split(" → ")
        assert (said_path, before != after) == (path, True)


@pytest.mark.parametrize(("edit", "expected"), [
    ({"machine": {**EVERY_FIELD["machine"], "memory": "3G"}}, "machine.memory: 2G → 3G"),
    ({"agent": {"enabled": False, "timeout": "2m"}}, "agent.enabled: true → false"),
    ({"boot": {**EVERY_FIELD["boot"], "initrd": None}}, 'boot.initrd: "/specs/initrd.gz" → unset'),
    ({"nics": [{**EVERY_FIELD["nics"][0], "vhost": True}]}, 'nics[0].vhost: "auto" → "on"'),
    ({"nics": [{**EVERY_FIELD["nics"][0], "queues": 4}]}, "nics[0].queues: 2 → 4"),
    ({"qemu": {"extra_args": []}}, 'qemu.extra_args: ["-device", "virtio-rng-pci"] → []'),
    ({"disks": [{**EVERY_FIELD["disks"][0], "cache": "writeback"}]}, 'disks[0].cache: "none" → "writeback"'),
    ({"nics": [*EVERY_FIELD["nics"], {"id": "net1"}]}, "nics[1]: added"),
    ({"shares": []}, "shares[0]: removed"),
    ({"cloud_init": None}, "cloud_init: set → unset"),
])
def test_how_each_kind_of_value_is_said(edit: dict[str, Any], expected: str) -> None:
    new = {key: value for key, value in {**EVERY_FIELD, **edit}.items() if value is not None}
    new["boot"] = {key: value for key, value in new["boot"].items() if value is not None}
    assert spec_differences(spec_of(EVERY_FIELD), spec_of(new)) == [expected]


ARGV = ("qemu-system-x86_64", "-m", "2048")


def test_differences_spec_first_then_the_seed_and_the_argv_only_when_no_spec_path_says_it() -> None:
    spec = spec_of(EVERY_FIELD)
    bigger = spec_of({**EVERY_FIELD, "machine": {**EVERY_FIELD["machine"], "memory": "3G"}})
    assert differences(Configuration(spec, ARGV, "i-1"), Configuration(spec, ARGV, "i-1")) == []
    assert differences(Configuration(spec, ARGV, "i-1"), Configuration(bigger, ("q", "-m", "3072"), "i-2")) == [
        "machine.memory: 2G → 3G", "cloud_init: the seed's files changed (instance-id i-1 → i-2)"]
    # What has no spec path (a new qemu, vhost-net appeared) shows as the argv.
    assert differences(Configuration(spec, ARGV), Configuration(spec, (*ARGV, "-x"))) == ['argv: added "-x"']
    # A state recorded without a spec: only the argv can tell.
    assert differences(Configuration(None, ARGV), Configuration(bigger, ("qemu-system-x86_64", "-m", "3072"))) == [
        'argv: removed "2048"', 'argv: added "3072"']


def test_a_change_that_needs_no_restart_leaves_the_vm_up_to_date() -> None:
    spec = spec_of(EVERY_FIELD)
    edited = spec_of({**EVERY_FIELD, "description": "else", "post_boot": [], "agent": {"timeout": "5m"}})
    assert differences(Configuration(spec, ARGV), Configuration(edited, ARGV)) == []


# --- the host side, on fake host trees ------------------------------------------------------------

NVME = FakePci("0000:01:00.0", group="12", driver="nvme")
ROOT_FACTS = HostFacts(kvm_usable=False, kvm_reason="no KVM here", drop_privileges=True, qemu_version="7.2.0")
NOBODY = "65534:65534"


def host_spec(**host: Any) -> Spec:
    return spec_of({
        "name": "web", "boot": {"kernel": str(REPO / "pyproject.toml")},
        "nics": [{"id": "net0", "tap": "vmtap0", "bridge": "br0"}, {"id": "net1", "tap": "vmtap1"}],
        "vfio": [{"id": "nvme0", "host": NVME.address}], "host": {"user": "nobody", "ksm": True, **host},
    })


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[FakeHost, Spec]:
    """A fake host as preflight leaves it for host_spec: two taps (one on br0), the NVMe on vfio-pci with
    its group node given to nobody, KSM on."""
    host = FakeHost(root=build_host_tree(tmp_path / "host", [NVME]), natural_drivers={NVME.address: "nvme"})
    add_bridge(host.root, "br0")
    spec = host_spec()
    apply_plan(plan_preflight(spec, host, ROOT_FACTS), host)
    assert host_differences(spec, host, as_root=True) == []
    return host, spec


def test_fake_host_a_deleted_tap_is_named_by_its_nic(prepared: tuple[FakeHost, Spec]) -> None:
    host, spec = prepared
    host.run(["ip", "tuntap", "del", "dev", "vmtap1", "mode", "tap"])
    assert host_differences(spec, host, as_root=True) == ["nics[1]: tap vmtap1 is gone from the host"]


def test_fake_host_a_tap_off_its_bridge_or_on_another(prepared: tuple[FakeHost, Spec]) -> None:
    host, spec = prepared
    host.run(["ip", "link", "set", "vmtap0", "nomaster"])
    assert host_differences(spec, host, as_root=True) == [
        "nics[0].bridge: tap vmtap0 is no longer attached to bridge br0"]
    add_bridge(host.root, "br1")
    attach(host.root, "vmtap0", "br1")
    assert host_differences(spec, host, as_root=True) == [
        "nics[0].bridge: tap vmtap0 is attached to br1, not to bridge br0"]


def test_fake_host_a_group_node_given_to_another_owner(prepared: tuple[FakeHost, Spec]) -> None:
    host, spec = prepared
    assert host.ownership("/dev/vfio/12") == NOBODY
    host.chown("/dev/vfio/12", "0:0")
    assert host_differences(spec, host, as_root=True) == [
        f"vfio[0]: /dev/vfio/12 is owned by 0:0, not by qemu's user ({NOBODY})"]


def test_fake_host_a_device_taken_back_by_its_host_driver(prepared: tuple[FakeHost, Spec]) -> None:
    host, spec = prepared
    host.write(f"/sys/bus/pci/devices/{NVME.address}/driver_override", "\n")
    host.write("/sys/bus/pci/drivers/vfio-pci/unbind", NVME.address)
    host.write("/sys/bus/pci/drivers_probe", NVME.address)
    assert host_differences(spec, host, as_root=True) == [f"vfio[0]: {NVME.address} is bound to nvme, not to vfio-pci"]


def test_fake_host_ksm_turned_off_counts_only_where_vmrun_could_turn_it_on(prepared: tuple[FakeHost, Spec]) -> None:
    host, spec = prepared
    host.write("/sys/kernel/mm/ksm/run", "0")
    assert host_differences(spec, host, as_root=True) == [
        "host.ksm: KSM is off on the host (/sys/kernel/mm/ksm/run = 0)"]
    # Not root: preflight only warned that KSM stays off. A spec without ksm does not care.
    assert host_differences(spec, host, as_root=False) == []
    assert host_differences(host_spec(ksm=False), host, as_root=True) == []
    # A kernel without KSM: the VM never had it.
    host.path("/sys/kernel/mm/ksm/run").unlink()
    assert host_differences(spec, host, as_root=True) == []


def test_fake_host_everything_at_once_in_spec_order(prepared: tuple[FakeHost, Spec]) -> None:
    host, spec = prepared
    host.write("/sys/kernel/mm/ksm/run", "2")
    host.chown("/dev/vfio/12", "0:0")
    host.run(["ip", "tuntap", "del", "dev", "vmtap0", "mode", "tap"])
    assert host_differences(spec, host, as_root=True) == [
        "nics[0]: tap vmtap0 is gone from the host",
        f"vfio[0]: /dev/vfio/12 is owned by 0:0, not by qemu's user ({NOBODY})",
        "host.ksm: KSM is off on the host (/sys/kernel/mm/ksm/run = 2)",
    ]


def pinned_qemu(root: Path, threads: dict[int, tuple[str, str]]) -> None:
    """A fake qemu (pid 4000) whose threads have these names and Cpus_allowed_list."""
    for tid, (name, cpus) in threads.items():
        put(root, f"/proc/4000/task/{tid}/comm", name + "\n")
        put(root, f"/proc/4000/task/{tid}/status", f"Name:\t{name}\nCpus_allowed_list:\t{cpus}\n")


def test_a_pinned_thread_someone_moved_is_host_drift_named_by_its_pin(tmp_path: Path) -> None:
    host = FakeHost(root=build_host_tree(tmp_path / "host", []))
    spec = spec_of({"name": "web", "boot": {"kernel": "vmlinuz"},
                    "machine": {"cpus": 2, "vcpu_pin": [2, 3], "emulator_pin": [0, 1]}})
    pinned_qemu(host.root, {4000: ("vmrun-web", "0-1"), 4001: ("CPU 0/TCG", "2"), 4002: ("CPU 1/TCG", "3"),
                            4003: ("IO io0", "0-1")})
    assert host_differences(spec, host, as_root=True, pid=4000) == []
    pinned_qemu(host.root, {4002: ("CPU 1/TCG", "0-3"), 4003: ("IO io0", "1")})
    assert host_differences(spec, host, as_root=True, pid=4000) == [
        "machine.vcpu_pin[1]: vCPU 1 runs on host CPUs 0-3, not 3",
        "machine.emulator_pin: qemu thread 4003 (IO io0) runs on host CPUs 1, not 0-1",
    ]
