"""Preflight on fake host trees (this machine has no IOMMU and no vhost-net), and on its real network stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from vmrun.errors import PreflightError
from vmrun.host.facts import HostFacts, PrivilegeDrop, gather_facts
from vmrun.host.in_use import why_host_needs
from vmrun.host.system import Host
from vmrun.preflight.apply import apply_plan, ksm_restore_value, undo_changes
from vmrun.preflight.changes import Action
from vmrun.preflight.network import IFF_MULTI_QUEUE
from vmrun.preflight.others import Others
from vmrun.preflight.plan import AppliedChange, Plan, PreflightRefused, Status, plan_preflight
from vmrun.spec.load import parse_spec
from vmrun.spec.model import Spec
from vmrun.units import MIB

from .common import REPO
from .fakehost import (
    FakeHost,
    FakePci,
    add_block_node,
    add_bridge,
    add_disk,
    add_kvm,
    add_net_device,
    add_scsi_disk,
    add_tap,
    attach,
    build_host_tree,
    hold_tap,
    put,
    snapshot,
)

ROOT_FACTS = HostFacts(kvm_usable=False, kvm_reason="no KVM here", drop_privileges=True, qemu_version="7.2.0")
USER_FACTS = attrs.evolve(ROOT_FACTS, drop_privileges=False)
NOBODY = 65534
BRIDGE = FakePci("0000:00:01.0", group="12", driver="pcieport", device_class="0x060400")
NVME = FakePci("0000:01:00.0", group="12", driver="nvme", behind="0000:00:01.0")
GPU = FakePci("0000:03:00.0", group="15", driver="amdgpu", device_class="0x030000")
GPU_AUDIO = FakePci("0000:03:00.1", group="15", driver="snd_hda_intel", device_class="0x040300")
NATURAL = {"0000:01:00.0": "nvme", "0000:03:00.0": "amdgpu", "0000:03:00.1": "snd_hda_intel"}


def make_spec(**sections: Any) -> Spec:
    data = {"name": "fake", "boot": {"kernel": str(REPO / "pyproject.toml")}, "host": {"user": "nobody"}, **sections}
    return parse_spec(data, source="t", base=Path("/"))


def vfio_spec(*addresses: str, memory: str = "1G") -> Spec:
    return make_spec(machine={"memory": memory},
                     vfio=[{"id": f"dev{index}", "host": address} for index, address in enumerate(addresses)])


def nic_spec(*, user: str = "nobody", **nic: Any) -> Spec:
    return make_spec(nics=[{"id": "n0", "tap": "vmtap0", **nic}], host={"user": user})


def fake_host(tmp_path: Path, devices: tuple[FakePci, ...] = (), **options: Any) -> FakeHost:
    root = build_host_tree(tmp_path / "host", list(devices))
    return FakeHost(root=root, natural_drivers=NATURAL, **options)


def plan_for(
    spec: Spec, host: Host, facts: HostFacts = ROOT_FACTS, others: Others | None = None, run_dir: Path | None = None
) -> Plan:
    return plan_preflight(spec, host, facts, others=others or Others(), run_dir=run_dir)


def messages(plan: Plan, status: Status = Status.FAIL) -> list[str]:
    return [check.message for check in plan.findings if check.status is status]


def driver_of(host: Host, address: str) -> str | None:
    return host.link_name(f"/sys/bus/pci/devices/{address}/driver")


def planned_writes(plan: Plan) -> list[tuple[str, str]]:
    return [(c.step.path, c.step.value) for c in plan.changes if c.step.action is Action.WRITE]


# --- VFIO -----------------------------------------------------------------------------------------


def test_fake_sysfs_viable_group_binds_exactly_the_function_and_chowns_its_group(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (BRIDGE, NVME))
    plan = plan_for(vfio_spec("01:00.0"), host)
    assert plan.failures == ()
    assert plan.to_json()["changes"] == [
        {"action": "write", "path": "/sys/bus/pci/devices/0000:01:00.0/driver_override", "value": "vfio-pci"},
        {"action": "write", "path": "/sys/bus/pci/devices/0000:01:00.0/driver/unbind", "value": "0000:01:00.0"},
        {"action": "write", "path": "/sys/bus/pci/drivers_probe", "value": "0000:01:00.0"},
        {"action": "chown", "path": "/dev/vfio/12", "value": "nobody"},
    ]
    apply_plan(plan, host)
    assert driver_of(host, "0000:01:00.0") == "vfio-pci"
    assert driver_of(host, "0000:00:01.0") == "pcieport"  # the bridge stays with the host
    assert host.ownership("/dev/vfio/12") == f"{NOBODY}:{NOBODY}"
    assert host.writes == planned_writes(plan)  # exactly what the plan said, in its order


@pytest.mark.parametrize(
    ("device", "natural"),
    [(NVME, {"0000:01:00.0": "nvme"}), (NVME, {}), (attrs.evolve(NVME, driver=None), {})],
    ids=["natural-driver", "driver-that-probing-would-not-pick", "no-driver"],
)
def test_fake_sysfs_down_gives_the_device_back_as_it_was_and_restores_the_tree(
    tmp_path: Path, device: FakePci, natural: dict[str, str]
) -> None:
    host = attrs.evolve(fake_host(tmp_path, (BRIDGE, device)), natural_drivers=natural)
    before = snapshot(host.root)
    applied = apply_plan(plan_for(vfio_spec("01:00.0"), host), host)
    assert driver_of(host, "0000:01:00.0") == "vfio-pci"
    assert undo_changes(applied, host) == []
    assert driver_of(host, "0000:01:00.0") == device.driver
    assert snapshot(host.root) == before  # override cleared, /dev/vfio/12 gone with its owner


def test_fake_sysfs_group_with_a_foreign_host_driver_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    before = snapshot(host.root)
    plan = plan_for(vfio_spec("03:00.0"), host)
    assert messages(plan) == ["IOMMU group 15 also holds 0000:03:00.1 (driver snd_hda_intel): list them in "
                              "[[vfio]] too, or unbind them from their host drivers"]
    with pytest.raises(PreflightRefused) as refused:
        apply_plan(plan, host)
    assert refused.value.lines() == [f"preflight: vfio dev0: {messages(plan)[0]}"]
    assert snapshot(host.root) == before and host.writes == []


def test_fake_sysfs_listed_group_partner_is_bound_too_and_the_group_chowned_once(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    plan = plan_for(vfio_spec("03:00.0", "03:00.1"), host)
    apply_plan(plan, host)
    assert driver_of(host, "0000:03:00.0") == driver_of(host, "0000:03:00.1") == "vfio-pci"
    assert [c.step.path for c in plan.changes if c.step.action is Action.CHOWN] == ["/dev/vfio/15"]
    assert plan.changes[-1].step.action is Action.CHOWN  # after every bind


def test_fake_sysfs_failure_midway_rolls_everything_back(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO), fail_on="/sys/bus/pci/devices/0000:03:00.1/driver/unbind")
    before = snapshot(host.root)
    with pytest.raises(PreflightError) as failed:
        apply_plan(plan_for(vfio_spec("03:00.0", "03:00.1"), host), host)
    assert str(failed.value) == ("preflight: write /sys/bus/pci/devices/0000:03:00.1/driver/unbind 0000:03:00.1 "
                                 "failed: Device or resource busy")
    assert failed.value.hint == "4 earlier change(s) rolled back"
    assert snapshot(host.root) == before


def test_fake_sysfs_no_iommu_missing_device_and_no_vfio_driver(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (BRIDGE, NVME))
    assert messages(plan_for(vfio_spec("02:00.0"), host)) == [
        "no PCI device 0000:02:00.0 on this host (lspci -D lists them)"]
    shutil.rmtree(host.path("/sys/bus/pci/drivers/vfio-pci"))
    assert messages(plan_for(vfio_spec("01:00.0"), host)) == ["the vfio-pci driver is not loaded (modprobe vfio-pci)"]
    [failure] = plan_for(vfio_spec("01:00.0"), Host(root=tmp_path / "empty")).failures
    assert failure.name == "iommu" and "intel_iommu=on" in failure.message


def test_fake_sysfs_without_root_nothing_is_bound_and_the_group_node_must_be_usable(tmp_path: Path) -> None:
    stubbed = FakePci("0000:02:00.0", group="13", driver="vfio-pci")
    host = fake_host(tmp_path, (BRIDGE, NVME, stubbed), memlock=(None, None))
    assert messages(plan_for(vfio_spec("01:00.0"), host, USER_FACTS)) == [
        "0000:01:00.0 is bound to nvme and only root can bind it to vfio-pci"]
    plan = plan_for(vfio_spec("02:00.0"), host, USER_FACTS)
    assert messages(plan) == [] and plan.changes == ()  # bound already, and /dev/vfio/13 is ours to open


@pytest.mark.parametrize(
    ("facts", "limits", "status", "memlock"),
    [
        (ROOT_FACTS, (64 * MIB, 64 * MIB), Status.OK, 9 * 1024 * MIB),  # root raises it for qemu
        (ROOT_FACTS, (None, None), Status.OK, None),  # unlimited already
        (USER_FACTS, (64 * MIB, None), Status.OK, 9 * 1024 * MIB),  # the hard limit allows raising it
        (USER_FACTS, (64 * MIB, 64 * MIB), Status.FAIL, None),
    ],
)
def test_fake_memlock_covers_guest_ram_plus_a_gibibyte(
    tmp_path: Path, facts: HostFacts, limits: tuple[int | None, int | None], status: Status, memlock: int | None
) -> None:
    host = fake_host(tmp_path, (FakePci("0000:02:00.0", group="13", driver="vfio-pci"),), memlock=limits)
    plan = plan_for(vfio_spec("02:00.0", memory="8G"), host, facts)
    [check] = [check for check in plan.findings if check.name == "memlock"]
    assert (check.status, plan.memlock) == (status, memlock)
    assert plan_for(vfio_spec(), host, facts).memlock is None


# --- taps, bridges, vhost -----------------------------------------------------------------------


def test_fake_missing_tap_is_created_multi_queue_for_qemus_user_and_deleted_on_down(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    before = snapshot(host.root)
    plan = plan_for(nic_spec(queues=4), host)
    assert plan.to_json()["changes"] == [{"action": "run", "path": "/sys/class/net/vmtap0",
                                          "value": "ip tuntap add dev vmtap0 mode tap multi_queue user nobody"}]
    applied = apply_plan(plan, host)
    assert int(host.read("/sys/class/net/vmtap0/tun_flags") or "0", 16) & IFF_MULTI_QUEUE
    assert host.read("/sys/class/net/vmtap0/owner") == str(NOBODY)
    assert undo_changes(applied, host) == []
    assert host.commands[-1] == ("ip", "tuntap", "del", "dev", "vmtap0", "mode", "tap", "multi_queue")
    assert snapshot(host.root) == before


FIX = "ip tuntap del dev vmtap0 mode tap{}; ip tuntap add dev vmtap0 mode tap{} user nobody"


@pytest.mark.parametrize(
    ("tap", "queues", "failure"),
    [
        ({"multi_queue": False}, 4, "tap vmtap0 has no multi_queue flag but queues = 4; recreate it: "
                                    + FIX.format("", " multi_queue")),
        ({"multi_queue": True}, 1, "tap vmtap0 is multi_queue but queues = 1, which qemu refuses: set queues > 1, "
                                   "or recreate it: " + FIX.format(" multi_queue", "")),
        ({"multi_queue": True, "owner": 1000}, 2, "tap vmtap0 belongs to uid 1000, not to nobody, who qemu runs as: "
                                                  "use another tap, or recreate it: "
                                                  + FIX.format(" multi_queue", " multi_queue")),
        ({"multi_queue": False, "group": 0}, 1, "tap vmtap0 belongs to gid 0, not to nobody, who qemu runs as: "
                                                "use another tap, or recreate it: " + FIX.format("", "")),
        ({"multi_queue": True}, 2, None),
        ({"multi_queue": False, "owner": NOBODY}, 1, None),
    ],
)
def test_fake_existing_tap_must_match_queues_and_owner(
    tmp_path: Path, tap: dict[str, Any], queues: int, failure: str | None
) -> None:
    host = fake_host(tmp_path)
    add_tap(host.root, "vmtap0", **tap)
    plan = plan_for(nic_spec(queues=queues), host)
    assert messages(plan) == ([failure] if failure else [])
    assert plan.changes == ()  # an existing tap is never touched


def test_fake_existing_tap_another_process_holds_is_refused(tmp_path: Path) -> None:
    """A qemu of a VM under another run directory has the tap open: with multi_queue, this VM's qemu would
    open more queues on it and the two guests would share one link."""
    host = fake_host(tmp_path)
    add_tap(host.root, "vmtap0", multi_queue=True)
    hold_tap(host.root, "vmtap1", pid=4242, command="vmrun-web")  # another tap: not in the way
    assert messages(plan_for(nic_spec(queues=2), host)) == []
    hold_tap(host.root, "vmtap0", pid=4343, command="vmrun-db")
    assert messages(plan_for(nic_spec(queues=2), host)) == [
        "tap vmtap0 is open in process 4343 (vmrun-db), which another VM may be using: give this NIC another tap "
        "(nics.tap)"
    ]


def test_fake_bridge_attach_brings_the_tap_up_and_down_detaches_it(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    add_bridge(host.root, "br0")
    before = snapshot(host.root)
    plan = plan_for(nic_spec(bridge="br0"), host)
    assert [c.step.value for c in plan.changes] == ["ip tuntap add dev vmtap0 mode tap user nobody",
                                                   "ip link set vmtap0 master br0 up"]
    applied = apply_plan(plan, host)
    assert host.link_name("/sys/class/net/vmtap0/master") == "br0"
    assert host.read("/sys/class/net/vmtap0/flags") == "0x1003"  # up
    undo_changes(applied, host)
    assert snapshot(host.root) == before


def test_fake_existing_up_tap_is_detached_but_left_up_and_in_place(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    add_bridge(host.root, "br0")
    add_tap(host.root, "vmtap0", multi_queue=False)
    put(host.root, "/sys/devices/virtual/net/vmtap0/flags", "0x1003\n")
    before = snapshot(host.root)
    applied = apply_plan(plan_for(nic_spec(bridge="br0"), host), host)
    assert host.commands == [("ip", "link", "set", "vmtap0", "master", "br0", "up")]
    undo_changes(applied, host)
    assert host.commands[-1] == ("ip", "link", "set", "vmtap0", "nomaster")
    assert snapshot(host.root) == before


def test_fake_bridge_problems_are_named(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    add_net_device(host.root, "eth1", "/sys/devices/virtual/net")
    add_bridge(host.root, "br1")
    add_tap(host.root, "vmtap0", multi_queue=False)
    attach(host.root, "vmtap0", "br1")
    assert messages(plan_for(nic_spec(bridge="br0"), host)) == [
        "bridge br0 does not exist (ip link add br0 type bridge)"]
    assert messages(plan_for(nic_spec(bridge="eth1"), host)) == ["eth1 is not a bridge (nics.bridge must name one)"]
    add_bridge(host.root, "br2")
    assert messages(plan_for(nic_spec(bridge="br2"), host)) == [
        "tap vmtap0 is attached to br1, not to bridge br2: ip link set vmtap0 nomaster"]
    already = plan_for(nic_spec(bridge="br1"), host)
    assert already.failures == () and already.changes == ()


def test_fake_without_root_a_missing_tap_is_refused_with_the_command_to_run(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    [failure] = messages(plan_for(nic_spec(queues=2), host, USER_FACTS))
    assert failure.startswith("tap vmtap0 does not exist and only root can create it: "
                              "sudo ip tuntap add dev vmtap0 mode tap multi_queue user ")


def test_fake_vhost_auto_is_off_with_a_warning_and_true_fails_without_dev_vhost_net(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    spec = make_spec(nics=[{"id": "a", "tap": "vmtap0"}, {"id": "b", "tap": "vmtap1", "vhost": True}])
    facts = gather_facts(host, "/nonexistent/qemu")
    vhost = [(c.name, c.status, c.message) for c in plan_for(spec, host, facts).findings if "vhost" in c.message]
    assert vhost == [
        ("nics a", Status.WARN, "vhost off: /dev/vhost-net is missing (modprobe vhost_net), so qemu moves the "
                                "packets itself (slower)"),
        ("nics b", Status.FAIL, "vhost = true but /dev/vhost-net is missing (modprobe vhost_net)"),
    ]
    put(host.root, "/dev/vhost-net")
    facts = gather_facts(host, "/nonexistent/qemu")
    assert [c.status for c in plan_for(spec, host, facts).findings if "vhost" in c.message] == [Status.OK] * 2


# --- disks, boot files, the qemu user, KSM ------------------------------------------------------


def test_fake_missing_disk_is_created_and_kept_on_down_but_removed_by_a_rollback(tmp_path: Path) -> None:
    image = tmp_path / "images/db/root.qcow2"
    spec = make_spec(disks=[{"id": "root", "path": str(image), "format": "qcow2", "size": "64M"}],
                     nics=[{"id": "n0", "tap": "vmtap0"}])
    host = fake_host(tmp_path)
    plan = plan_for(spec, host)
    assert [str(c.step) for c in plan.changes] == [
        f"mkdir {tmp_path}/images", f"mkdir {tmp_path}/images/db", f"qemu-img create -q -f qcow2 {image} 64M",
        "ip tuntap add dev vmtap0 mode tap user nobody"]
    applied = apply_plan(plan, host)
    assert image.stat().st_size == 64 * MIB
    assert undo_changes(applied, host) == []
    assert image.exists() and not host.exists("/sys/class/net/vmtap0")  # user data stays, the tap goes

    image.unlink()
    (tmp_path / "images/db").rmdir()
    (tmp_path / "images").rmdir()
    failing = attrs.evolve(host, fail_on="ip tuntap add")
    with pytest.raises(PreflightError, match="ip tuntap add dev vmtap0 .* failed: ip: failed, as the test asked"):
        apply_plan(plan, failing)
    assert not (tmp_path / "images").exists()  # the image it had just made went with the rollback


def test_fake_disk_problems(tmp_path: Path) -> None:
    shared = tmp_path / "shared.raw"
    shared.write_text("")
    (tmp_path / "alias.raw").symlink_to(shared)
    spec = make_spec(disks=[
        {"id": "a", "path": str(tmp_path / "alias.raw")},
        {"id": "b", "path": str(tmp_path / "missing.raw")},
        {"id": "c", "path": str(tmp_path), "passthrough": True},
        {"id": "d", "path": str(tmp_path)},
    ])
    plan = plan_for(spec, fake_host(tmp_path), others=Others(writable_disks=frozenset({str(shared)})))
    assert messages(plan) == [
        f"{tmp_path}/alias.raw is already used writable by another running vmrun VM",
        f"{tmp_path}/missing.raw does not exist; set disks[1].size to create it",
        f"passthrough needs a block device; {tmp_path} is a directory, not a block device",
        f"{tmp_path} is a directory, not a disk image",
    ]


def test_fake_passthrough_takes_a_whole_scsi_disk_only(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (NVME,))
    sdb = add_scsi_disk(host.root, "sdb", 16)
    nvme = add_block_node(host.root, "nvme0n1", 259, 0, sysfs_dir=add_disk(host.root, "nvme0n1", NVME.sysfs_dir))
    spec = make_spec(disks=[{"id": disk_id, "path": path, "passthrough": True}
                            for disk_id, path in (("lun", sdb), ("part", f"{sdb}1"), ("nvme", nvme))])
    plan = plan_for(spec, host)
    assert [(c.name, c.status, c.message) for c in plan.findings if c.name.startswith("disks")] == [
        ("disks lun", Status.OK, "/dev/sdb is a SCSI disk (scsi-block)"),
        *((f"disks {disk_id}", Status.FAIL, f"passthrough needs a whole SCSI disk (scsi-block sends it SCSI "
           f"commands); {path} is a block device but not one: set passthrough = false to attach it as a plain disk")
          for disk_id, path in (("part", "/dev/sdb1"), ("nvme", nvme))),
    ]


def test_passthrough_on_a_loop_device_is_refused_real_host(tmp_path: Path) -> None:
    image = tmp_path / "lun.img"
    image.write_bytes(bytes(1024 * 1024))
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    try:
        plan = plan_for(make_spec(disks=[{"id": "lun", "path": device, "passthrough": True}]), Host())
        assert messages(plan) == [
            f"passthrough needs a whole SCSI disk (scsi-block sends it SCSI commands); {device} is a block device "
            "but not one: set passthrough = false to attach it as a plain disk"]
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)


def test_fake_missing_tiny_guest_kernel_names_the_build_script(tmp_path: Path) -> None:
    spec = make_spec(boot={"kernel": str(tmp_path / "images/tiny/vmlinuz")})
    assert messages(plan_for(spec, fake_host(tmp_path))) == [
        f"{tmp_path}/images/tiny/vmlinuz does not exist (run integration/tiny-guest/build)"]


def test_fake_qemu_user_vmrun_is_created_and_kept_other_missing_users_fail(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    plan = plan_for(make_spec(host={"user": "vmrun"}, nics=[{"id": "n0", "tap": "vmtap0"}]), host)
    assert [str(c.step) for c in plan.changes] == [
        "useradd --system --no-create-home --shell /usr/sbin/nologin vmrun",
        "ip tuntap add dev vmtap0 mode tap user vmrun",  # after the user exists
    ]
    undo_changes(apply_plan(plan, host), host)
    assert host.user("vmrun") is not None and not host.exists("/sys/class/net/vmtap0")
    assert messages(plan_for(make_spec(host={"user": "qemu"}), host)) == [
        "host.user 'qemu' does not exist: create it, or use 'vmrun' (preflight creates that one)"]


def test_fake_ksm_turns_on_and_only_the_last_vm_that_wants_it_restores_it(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    run = host.path("/sys/kernel/mm/ksm/run")
    first = apply_plan(plan_for(make_spec(host={"user": "nobody", "ksm": True}), host), host)
    assert run.read_text() == "1"
    # A second VM finds KSM on and takes over the duty to restore it.
    others = Others(want_ksm=True, ksm_previous=ksm_restore_value(first))
    second = apply_plan(plan_for(make_spec(host={"user": "nobody", "ksm": True}), host, others=others), host)
    undo_changes(first, host, others=Others(want_ksm=True))  # the first goes down while the second runs
    assert run.read_text() == "1"
    undo_changes(second, host)  # the last one down
    assert run.read_text() == "0"


def test_fake_ksm_already_on_is_left_as_it_is_and_on(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    host.write("/sys/kernel/mm/ksm/run", "1")
    plan = plan_for(make_spec(host={"user": "nobody", "ksm": True}), host)
    assert [c.message for c in plan.findings if c.name == "ksm"] == ["KSM is running"]
    assert plan.changes == ()
    undo_changes(apply_plan(plan, host), host)
    assert host.read("/sys/kernel/mm/ksm/run") == "1"


def test_fake_kernel_without_ksm_is_a_warning_and_no_change(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    host.path("/sys/kernel/mm/ksm/run").unlink()
    plan = plan_for(make_spec(host={"user": "nobody", "ksm": True}), host)
    assert messages(plan, Status.WARN) == ["this kernel has no KSM (/sys/kernel/mm/ksm): running without it"]
    assert plan.changes == ()


def test_fake_rollback_that_cannot_undo_a_change_says_so_and_undoes_the_rest(tmp_path: Path) -> None:
    host = fake_host(tmp_path, fail_on="/sys/kernel/mm/ksm/run", fail_also_on="ip link set vmtap0 nomaster")
    add_bridge(host.root, "br0")
    spec = make_spec(nics=[{"id": "n0", "tap": "vmtap0", "bridge": "br0"}], host={"user": "nobody", "ksm": True})
    with pytest.raises(PreflightError) as failed:
        apply_plan(plan_for(spec, host), host)
    assert str(failed.value) == "preflight: write /sys/kernel/mm/ksm/run 1 failed: Device or resource busy"
    assert failed.value.hint == ("2 earlier change(s) rollback incomplete: ip link set vmtap0 nomaster down: "
                                 "ip: failed, as the test asked")
    assert host.commands[-1] == ("ip", "tuntap", "del", "dev", "vmtap0", "mode", "tap")  # undone all the same
    assert not host.exists("/sys/class/net/vmtap0")


def test_fake_down_reports_what_it_could_not_undo_but_not_an_entry_never_marked_done(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    add_bridge(host.root, "br0")
    applied = apply_plan(plan_for(nic_spec(bridge="br0"), host), host)
    stuck = attrs.evolve(host, fail_on="ip link set vmtap0 nomaster")
    assert undo_changes(applied, stuck) == [
        "ip link set vmtap0 nomaster down: ip: failed, as the test asked"]
    assert not host.exists("/sys/class/net/vmtap0")  # the tap went all the same
    # An entry never marked done may never have reached the host: its undo failing is no news.
    half_done = attrs.evolve(applied[1], done=False)
    assert undo_changes([half_done], stuck) == []


def test_fake_ksm_without_root_is_a_warning(tmp_path: Path) -> None:
    plan = plan_for(make_spec(host={"user": "nobody", "ksm": True}), fake_host(tmp_path), USER_FACTS)
    assert messages(plan, Status.WARN) == ["KSM is off (run = 0) and only root can turn it on: running without it"]


def test_applied_changes_survive_the_state_file(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (BRIDGE, NVME))
    applied = apply_plan(plan_for(vfio_spec("01:00.0"), host), host)
    restored = [AppliedChange.from_json(json.loads(json.dumps(change.to_json()))) for change in applied]
    assert restored == list(applied)
    assert applied[0].to_json() == {
        "action": "write", "path": "/sys/bus/pci/devices/0000:01:00.0/driver_override", "value": "vfio-pci",
        "undo": [
            {"action": "write", "path": "/sys/bus/pci/devices/0000:01:00.0/driver_override", "value": "nvme"},
            {"action": "write", "path": "/sys/bus/pci/drivers_probe", "value": "0000:01:00.0"},
            {"action": "write", "path": "/sys/bus/pci/devices/0000:01:00.0/driver_override", "value": "\n"},
        ],
        "on_down": "undo",
            "done": True,
    }


def test_every_failed_check_is_listed_and_nothing_is_applied(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    spec = attrs.evolve(vfio_spec("03:00.0"), nics=nic_spec(bridge="br9").nics)
    before = snapshot(host.root)
    with pytest.raises(PreflightRefused) as refused:
        apply_plan(plan_for(spec, host), host)
    assert [line.split(":")[1] for line in refused.value.lines()] == [" nics n0", " vfio dev0"]
    assert snapshot(host.root) == before


# --- accelerator ----------------------------------------------------------------------------------


def test_fake_host_like_this_machine_gets_tcg_with_the_kvm_pvm_reason(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    add_kvm(host.root, modules=["kvm", "kvm_pvm"], cpu_flags="fpu sse2 hypervisor")
    facts = gather_facts(host, "/nonexistent/qemu")
    plan = plan_for(make_spec(), host, facts)
    assert str(plan.accel.accel) == "tcg" and "kvm_pvm" in plan.accel.reason and "TCG" in plan.accel.reason
    assert "kvm_pvm" in messages(plan_for(make_spec(machine={"accel": "kvm"}), host, facts))[0]


def test_fake_host_with_kvm_intel_gets_kvm(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    add_kvm(host.root, modules=["kvm", "kvm_intel"], cpu_flags="fpu vmx")
    plan = plan_for(make_spec(), host, gather_facts(host, "/nonexistent/qemu"))
    assert (str(plan.accel.accel), plan.accel.reason) == ("kvm", "auto: /dev/kvm is usable (kvm_intel loaded)")


def test_fake_host_without_kvm_refuses_what_only_kvm_runs_when_auto_gets_tcg(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    add_kvm(host.root, modules=["kvm", "kvm_pvm"], cpu_flags="fpu sse2 hypervisor")
    facts = gather_facts(host, "/nonexistent/qemu")
    plan = plan_for(make_spec(machine={"cpu_model": "host", "cpus": 256, "memory": "1T"}), host, facts)
    reason = plan.accel.reason
    assert [check.message for check in plan.findings if check.name == "accelerator"] == [
        f'machine.cpu_model = "host" needs KVM, but this host gets TCG ({reason}): '
        "set accel = kvm on a host with hardware virtualization, or drop cpu_model",
        f"machine.cpus: 256 vCPUs exceed the 255 qemu runs under TCG, but this host gets TCG ({reason}): "
        "more need KVM's in-kernel irqchip",
        f"machine.memory: 1T exceeds the 960G qemu gives a TCG guest (40 physical address bits), but this host "
        f"gets TCG ({reason}): more needs KVM",
    ]
    assert all(check.status is Status.FAIL for check in plan.findings if check.name == "accelerator")
    add_kvm(host.root, modules=["kvm", "kvm_intel"], cpu_flags="fpu vmx")
    kvm = plan_for(make_spec(machine={"cpu_model": "host"}), host, gather_facts(host, "/nonexistent/qemu"))
    assert [check.status for check in kvm.findings if check.name == "accelerator"] == [Status.OK]


# --- shares ---------------------------------------------------------------------------------------


def share_spec(path: Path, *, user: str = "nobody", **share: Any) -> Spec:
    return make_spec(shares=[{"id": "data", "path": str(path), "tag": "data", **share}], host={"user": user})


def test_share_qemus_user_cannot_reach_is_refused_naming_the_component(tmp_path: Path, reachable_tmp: Path) -> None:
    private = reachable_tmp / "private"
    share = private / "share"
    share.mkdir(parents=True)
    private.chmod(0o700)
    share.chmod(0o777)
    host = fake_host(tmp_path)
    assert messages(plan_for(share_spec(share), host)) == [
        f"qemu runs as nobody, who cannot use {private} (mode 0o700)"]
    # A user preflight has yet to create owns nothing: the same bits for others decide.
    assert messages(plan_for(share_spec(share, user="vmrun"), host)) == [
        f"qemu runs as vmrun, who cannot use {private} (mode 0o700)"]
    private.chmod(0o755)
    assert plan_for(share_spec(share), host).failures == ()


def test_share_problems(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    assert messages(plan_for(share_spec(tmp_path / "nope"), host)) == [f"{tmp_path}/nope does not exist"]
    assert messages(plan_for(share_spec(tmp_path, security_model="passthrough"), host)) == [
        'security_model = "passthrough" needs qemu to run as root (vmrun as root with host.user = "root" and '
        'host.allow_root = true); '
        'use "mapped-xattr"']
    assert plan_for(share_spec(tmp_path, security_model="passthrough", user="root"), host).failures == ()
    # sysfs stores no user xattrs: the probe tells.
    assert messages(plan_for(share_spec(Path("/sys/kernel/mm"), readonly=True), Host())) == [
        "/sys/kernel/mm's filesystem stores no user xattrs; use security_model = \"mapped-file\""]


# --- the command line -----------------------------------------------------------------------------


def vmrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmrun", *args], capture_output=True, text=True, timeout=60)


def test_cli_dry_run_on_a_fake_tree_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (BRIDGE, NVME))
    spec = tmp_path / "spec.toml"
    spec.write_text(f'name = "fake"\n[boot]\nkernel = "{REPO / "pyproject.toml"}"\n'
                    '[[vfio]]\nid = "nvme0"\nhost = "01:00.0"\n[host]\nuser = "nobody"\n')
    before = snapshot(host.root)
    result = vmrun("--host-root", str(host.root), "preflight", str(spec), "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert set(plan) >= {"checks", "changes", "accel", "memlock"}
    assert plan["changes"][0] == {"action": "write", "value": "vfio-pci",
                                  "path": "/sys/bus/pci/devices/0000:01:00.0/driver_override"}
    assert {"action": "chown", "path": "/dev/vfio/12", "value": "nobody"} in plan["changes"]
    text = vmrun("--host-root", str(host.root), "preflight", str(spec), "--dry-run").stdout
    assert "  write  /sys/bus/pci/devices/0000:01:00.0/driver_override  vfio-pci\n" in text
    assert snapshot(host.root) == before


def test_missing_qemu_is_a_failed_check_not_a_crash(tmp_path: Path) -> None:
    facts = attrs.evolve(ROOT_FACTS, qemu_version=None)
    [failure] = plan_for(make_spec(), fake_host(tmp_path), facts).failures
    assert failure.name == "qemu" and "apt-get install qemu-system-x86" in failure.message


def test_a_qemu_that_cannot_drop_root_is_refused_only_to_root(tmp_path: Path) -> None:
    """A qemu whose -help lists neither -run-with user= nor -runas would keep running as root."""
    cannot_drop = attrs.evolve(ROOT_FACTS, qemu_version="9.0.0", privilege_drop=PrivilegeDrop.IMPOSSIBLE)
    [failure] = plan_for(make_spec(), fake_host(tmp_path), cannot_drop).failures
    assert (failure.name, failure.message) == (
        "qemu", "qemu-system-x86_64 9.0.0 has neither -run-with user= nor -runas, so it would keep root's "
                "privileges: use a qemu that has either, or run vmrun as another user")
    as_user = attrs.evolve(cannot_drop, drop_privileges=False)
    [check] = [c for c in plan_for(make_spec(), fake_host(tmp_path), as_user).findings if c.name == "qemu"]
    assert (check.status, check.message) == (Status.OK, "qemu-system-x86_64 9.0.0")


def test_fake_qemu_kept_root_is_said_as_a_warning_and_needs_no_way_to_drop(tmp_path: Path) -> None:
    cannot_drop = attrs.evolve(ROOT_FACTS, qemu_version="9.0.0", privilege_drop=PrivilegeDrop.IMPOSSIBLE)
    plan = plan_for(make_spec(host={"user": "root", "allow_root": True}), fake_host(tmp_path), cannot_drop)
    assert plan.failures == ()
    assert [(c.name, c.status, c.message) for c in plan.findings if c.name.startswith("qemu")] == [
        ("qemu", Status.OK, "qemu-system-x86_64 9.0.0"),
        ("qemu user", Status.WARN, 'qemu keeps root\'s privileges (host.user = "root", host.allow_root = true): a '
                                   "guest that breaks out of qemu owns the host"),
    ]


def test_cli_up_without_qemu_exits_3_without_a_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(f'name = "noqemu"\n[boot]\nkernel = "{REPO / "pyproject.toml"}"\n'
                    '[qemu]\nbinary = "/nonexistent/qemu-system-x86_64"\n[agent]\nenabled = false\n')
    result = vmrun("--run-dir", str(tmp_path / "run"), "up", str(spec))
    assert result.returncode == 3, result.stderr
    assert "preflight: qemu: /nonexistent/qemu-system-x86_64 not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_uefi_without_ovmf_is_a_failed_check(tmp_path: Path) -> None:
    facts = attrs.evolve(ROOT_FACTS, ovmf_code=tmp_path / "OVMF_CODE_4M.fd")
    [failure] = plan_for(make_spec(boot={"disk": "x", "firmware": "uefi"}), fake_host(tmp_path), facts).failures
    assert failure.name == "firmware"
    assert failure.message.endswith("OVMF_VARS_4M.fd (Debian: apt-get install ovmf)")


# --- this machine's own network stack and devices ------------------------------------------------

SUFFIX = str(os.getpid())[-5:]
REAL_TAP, REAL_BRIDGE = f"vmrt{SUFFIX}", f"vmrtbr{SUFFIX}"  # test-only names, at most 15 bytes


@pytest.fixture
def real_net() -> Iterator[Path]:
    """/sys/class/net, when this test may make taps and bridges on the host; fails if one is left behind."""
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        pytest.skip("needs root and /dev/net/tun")
    yield Path("/sys/class/net")
    for name in (REAL_TAP, REAL_BRIDGE):
        if Path("/sys/class/net", name).exists():
            subprocess.run(["ip", "link", "del", name], check=False)
            pytest.fail(f"{name} was left behind")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def real_nic_spec(**nic: Any) -> Spec:
    return make_spec(nics=[{"id": "n0", "tap": REAL_TAP, **nic}])


def test_multi_queue_tap_is_created_and_deleted_real_host(real_net: Path) -> None:
    host = Host()
    applied = apply_plan(plan_for(real_nic_spec(queues=4), host), host)
    try:
        assert int((real_net / REAL_TAP / "tun_flags").read_text(), 16) & IFF_MULTI_QUEUE
        assert (real_net / REAL_TAP / "owner").read_text().strip() == str(NOBODY)
    finally:
        assert undo_changes(applied, host) == []
    assert not (real_net / REAL_TAP).exists()


def test_existing_plain_tap_with_queues_fails_with_the_fix_real_host(real_net: Path) -> None:
    ip("tuntap", "add", "dev", REAL_TAP, "mode", "tap")
    try:
        [failure] = messages(plan_for(real_nic_spec(queues=2), Host()))
        assert failure.startswith(f"tap {REAL_TAP} has no multi_queue flag but queues = 2; recreate it: "
                                  f"ip tuntap del dev {REAL_TAP} mode tap; ")
    finally:
        ip("tuntap", "del", "dev", REAL_TAP, "mode", "tap")


HOLD_TAP = """
import fcntl, struct, sys
tun = open("/dev/net/tun", "r+b", buffering=0)
IFF_TAP, IFF_NO_PI, IFF_MULTI_QUEUE, TUNSETIFF = 0x2, 0x1000, 0x100, 0x400454CA
fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", sys.argv[1].encode(), IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE))
print("attached", flush=True)
sys.stdin.read()
"""


def test_existing_tap_another_process_holds_is_refused_real_host(real_net: Path) -> None:
    """The kernel's own fdinfo of a process that attached a queue to the tap, as another VM's qemu does."""
    ip("tuntap", "add", "dev", REAL_TAP, "mode", "tap", "multi_queue")
    try:
        assert messages(plan_for(real_nic_spec(queues=2), Host())) == []
        with subprocess.Popen([sys.executable, "-c", HOLD_TAP, REAL_TAP], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) as holder:
            assert holder.stdout is not None and holder.stdout.readline() == "attached\n"
            [failure] = messages(plan_for(real_nic_spec(queues=2), Host()))
            holder.communicate("")
        assert failure.startswith(f"tap {REAL_TAP} is open in process {holder.pid} (python")
    finally:
        ip("tuntap", "del", "dev", REAL_TAP, "mode", "tap", "multi_queue")


def test_tap_is_attached_to_a_bridge_and_detached_real_host(real_net: Path) -> None:
    ip("link", "add", REAL_BRIDGE, "type", "bridge")
    try:
        host = Host()
        applied = apply_plan(plan_for(real_nic_spec(queues=2, bridge=REAL_BRIDGE), host), host)
        try:
            assert os.readlink(real_net / REAL_TAP / "master").endswith(f"/{REAL_BRIDGE}")
        finally:
            assert undo_changes(applied, host) == []
        assert not (real_net / REAL_TAP).exists() and not list((real_net / REAL_BRIDGE).glob("lower_*"))
    finally:
        ip("link", "del", REAL_BRIDGE)


def _pci_function_of(sysfs_link: Path) -> str | None:
    """The PCI address a device's sysfs directory sits under (a virtio NIC or disk sits below one)."""
    return next((part for part in reversed(sysfs_link.resolve().parts) if len(part) == 12 and part[4] == ":"), None)


def test_this_host_and_its_recording_refuse_the_same_functions_real_host(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "integration/record-host"), str(tmp_path)], check=True,
                   capture_output=True)
    live, recorded = Host(), Host(root=tmp_path)
    verdicts = {address: why_host_needs(live, address) for address in live.listdir("/sys/bus/pci/devices")}
    assert verdicts == {address: why_host_needs(recorded, address) for address in verdicts}
    route = next((row.split()[0] for row in Path("/proc/net/route").read_text().splitlines()[1:]
                  if row.split()[1] == "00000000"), None)
    nic = _pci_function_of(Path(f"/sys/class/net/{route}/device")) if route else None
    if nic is None:
        pytest.skip("the default route leaves through no PCI NIC here")
    assert (verdicts[nic] or "").startswith(f"it is {route}, which carries the host's default route")


# --- huge pages, pinning, NUMA: fake trees for the layouts this host lacks ------------------------------------

POOL_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB"


def tuned_host(tmp_path: Path, *, cpus: str = "0-3", online: str = "0-3", nodes: str = "0", free: int = 0,
               total: int = 0, available_kb: int = 8 << 20) -> FakeHost:
    host = fake_host(tmp_path)
    root = host.root
    put(root, "/sys/devices/system/cpu/present", cpus + "\n")
    put(root, "/sys/devices/system/cpu/online", online + "\n")
    put(root, "/sys/devices/system/node/possible", nodes + "\n")
    put(root, "/sys/devices/system/node/online", nodes + "\n")
    for pool in (POOL_2M, "/sys/devices/system/node/node0/hugepages/hugepages-2048kB"):
        put(root, f"{pool}/nr_hugepages", f"{total}\n")
        put(root, f"{pool}/free_hugepages", f"{free}\n")
    put(root, f"{POOL_2M}/resv_hugepages", "0\n")
    put(root, "/proc/meminfo", f"MemTotal: 16000000 kB\nMemAvailable: {available_kb} kB\n")
    return host


def tuned_spec(**machine: Any) -> Spec:
    return make_spec(machine={"cpus": 2, "memory": "512M", **machine})


def test_fake_host_with_four_cpus_one_offline_refuses_pins_on_missing_and_offline_cpus(tmp_path: Path) -> None:
    host = tuned_host(tmp_path, online="0-2")
    plan = plan_for(tuned_spec(vcpu_pin=[3, 7], emulator_pin=[0]), host)
    assert [(check.name, check.message) for check in plan.failures] == [
        ("machine.vcpu_pin", "host CPU 7 does not exist (this host has CPUs 0-3)"),
        ("machine.vcpu_pin", "host CPU 3 is offline (online: 0-2)"),
    ]
    with pytest.raises(PreflightRefused, match="machine.vcpu_pin"):
        apply_plan(plan, host)


def test_fake_host_with_two_numa_nodes_one_offline_refuses_binding_to_it(tmp_path: Path) -> None:
    host = tuned_host(tmp_path, nodes="0-1")
    host.write("/sys/devices/system/node/online", "0")
    assert messages(plan_for(tuned_spec(numa_node=1), host)) == ["host NUMA node 1 is offline (online: 0)"]
    assert messages(plan_for(tuned_spec(numa_node=4), host)) == ["host NUMA node 4 does not exist (this host has "
                                                                  "nodes 0-1)"]


def test_missing_huge_pages_are_reserved_and_down_gives_back_only_this_vms(tmp_path: Path) -> None:
    host = tuned_host(tmp_path, total=10, free=10)
    total = f"{POOL_2M}/nr_hugepages"
    first = apply_plan(plan_for(tuned_spec(hugepages="2M"), host), host)  # 256 pages, 10 free: 246 more
    assert host.read(total) == "256"
    host.write(f"{POOL_2M}/free_hugepages", "0")  # the first VM's qemu holds them
    others = Others(hugepages={total: 246})
    second = apply_plan(plan_for(tuned_spec(hugepages="2M", memory="64M"), host, others=others), host)
    assert host.read(total) == "288"
    undo_changes(first, host, others=Others(hugepages={total: 32}))  # the first goes down, the second runs
    assert host.read(total) == "42"
    undo_changes(first, host, others=Others(hugepages={total: 32}))  # a down killed midway runs again
    assert host.read(total) == "42"
    undo_changes(second, host)
    assert host.read(total) == "10"


def test_enough_free_huge_pages_change_nothing(tmp_path: Path) -> None:
    host = tuned_host(tmp_path, total=300, free=300)
    plan = plan_for(tuned_spec(hugepages="2M"), host)
    assert plan.changes == () and messages(plan, Status.OK)[-1] == "256 pages from the 2M pool (300 free)"


def test_a_pool_that_cannot_grow_is_refused_naming_the_field(tmp_path: Path) -> None:
    host = tuned_host(tmp_path, available_kb=100 * 1024)
    plan = plan_for(tuned_spec(hugepages="2M"), host)
    assert [(check.name, check.message) for check in plan.failures] == [
        ("machine.hugepages", "256 pages needed, 0 free in the 2M pool, and the pool cannot grow by 512M: the host "
                              "has 100M available")]
    assert messages(plan_for(tuned_spec(hugepages="1G", memory="1G"), host)) == [
        "this host has no 1G pool (/sys/kernel/mm/hugepages/hugepages-1048576kB)"]
    assert messages(plan_for(tuned_spec(hugepages="2M"), tuned_host(tmp_path / "u"), USER_FACTS)) == [
        "256 pages needed, 0 free in the 2M pool, and only root can reserve more: sudo vmrun preflight"]


def test_huge_pages_of_a_numa_node_are_reserved_on_that_node(tmp_path: Path) -> None:
    host = tuned_host(tmp_path)
    plan = plan_for(tuned_spec(hugepages="2M", numa_node=0), host)
    assert [change.to_json() for change in plan.changes] == [{
        "action": "write", "path": "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages",
        "value": "256"}]


class KernelFinds100Pages(FakeHost):
    def write(self, host_path: str | Path, value: str) -> None:
        pool_total = str(host_path).endswith("nr_hugepages")
        super().write(host_path, str(min(int(value), 100)) if pool_total else value)


def test_a_pool_the_kernel_grows_only_partly_is_a_refusal_and_left_as_it_was(tmp_path: Path) -> None:
    host = KernelFinds100Pages(root=tuned_host(tmp_path, total=4).root, natural_drivers=NATURAL)
    with pytest.raises(PreflightError, match="the kernel found memory for only 100 of 260 huge pages"):
        apply_plan(plan_for(tuned_spec(hugepages="2M"), host), host)
    assert host.read(f"{POOL_2M}/nr_hugepages") == "4"
