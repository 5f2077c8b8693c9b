"""What the host cannot give away, on fake host trees: preflight refuses it, and `host iommu` offers no
[[vfio]] line for it and says why, in the same words."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vmrun.preflight.report import iommu_report, iommu_text

from .fakehost import (
    FakeHost,
    FakePci,
    add_bridge,
    add_default_route,
    add_device_mapper,
    add_disk,
    add_net_device,
    add_virtio,
    add_virtio_port,
    attach,
    open_file,
    put,
)
from .test_preflight import BRIDGE, NVME, fake_host, messages, plan_for, vfio_spec

# A virtio PCI function, alone in its group as behind its own root port.
VIRTIO = FakePci("0000:01:00.0", group="12", driver="virtio-pci", device_class="0x018000", behind="0000:00:01.0")
PLAIN_ROOT = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"


def _boot_vga(host: FakeHost) -> None:
    put(host.root, f"{NVME.sysfs_dir}/boot_vga", "1\n")


def _mounted_partition(host: FakeHost) -> None:
    add_disk(host.root, "nvme0n1", NVME.sysfs_dir, partitions=("nvme0n1p1", "nvme0n1p2"))
    put(host.root, "/proc/mounts", "/dev/vda1 / ext4 rw 0 0\n/dev/nvme0n1p2 /srv ext4 rw 0 0\n")


def _mounted_lvm_on_partition(host: FakeHost) -> None:
    disk = add_disk(host.root, "nvme0n1", NVME.sysfs_dir, partitions=("nvme0n1p1",))
    add_device_mapper(host.root, "dm-0", "vg-root", on=f"{disk}/nvme0n1p1")
    put(host.root, "/proc/mounts", "/dev/mapper/vg-root / ext4 rw 0 0\n")


def _root_seen_only_by_the_hosts_init(host: FakeHost) -> None:
    # vmrun runs chrooted: its own table lacks the host's root, which the kernel calls /dev/root.
    add_disk(host.root, "nvme0n1", NVME.sysfs_dir, partitions=("nvme0n1p1", "nvme0n1p2"))
    put(host.root, "/proc/mounts", "/dev/vdb / ext4 rw 0 0\nproc /proc proc rw 0 0\n")
    put(host.root, "/proc/1/mountinfo", "1 0 259:2 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
                                        "30 1 0:5 / /proc rw shared:12 - proc proc rw\n")


def _lvm_seen_only_by_the_hosts_init(host: FakeHost) -> None:
    disk = add_disk(host.root, "nvme0n1", NVME.sysfs_dir, partitions=("nvme0n1p1",))
    add_device_mapper(host.root, "dm-3", "vg-home", on=f"{disk}/nvme0n1p1")
    put(host.root, "/proc/1/mountinfo", PLAIN_ROOT + "40 22 253:3 / /home\\040dir rw shared:9 - xfs /dev/dm-3 rw\n")


def _swap(host: FakeHost) -> None:
    add_disk(host.root, "nvme0n1", NVME.sysfs_dir, partitions=("nvme0n1p3",))
    with open(host.path("/proc/swaps"), "a") as swaps:
        swaps.write("/dev/nvme0n1p3\tpartition\t8388604\t0\t-2\n")


def _default_route_nic(host: FakeHost) -> None:
    add_net_device(host.root, "enp1s0", NVME.sysfs_dir)
    add_default_route(host.root, "enp1s0")


def _default_route_through_a_bridge(host: FakeHost) -> None:
    add_net_device(host.root, "enp1s0", NVME.sysfs_dir)
    add_bridge(host.root, "br0")
    attach(host.root, "enp1s0", "br0")
    add_default_route(host.root, "br0")


def _unmounted_disk(host: FakeHost) -> None:
    add_disk(host.root, "nvme0n1", NVME.sysfs_dir, partitions=("nvme0n1p1",))
    put(host.root, "/proc/mounts", "/dev/nvme0n10 /x ext4 rw 0 0\n")  # a name it is only a prefix of


def _mounted_9p_share(host: FakeHost) -> None:
    add_virtio(host.root, "virtio3", VIRTIO.sysfs_dir, "9pnet_virtio", mount_tag="hostroot\0")
    put(host.root, "/proc/1/mountinfo", "1 0 0:31 / / ro,relatime - 9p hostroot ro,trans=virtio\n")


def _unmounted_9p_share(host: FakeHost) -> None:
    add_virtio(host.root, "virtio3", VIRTIO.sysfs_dir, "9pnet_virtio", mount_tag="spare\0")
    put(host.root, "/proc/1/mountinfo", "1 0 0:31 / / ro,relatime - 9p hostroot ro,trans=virtio\n")


def _mounted_virtiofs_share(host: FakeHost) -> None:
    device = add_virtio(host.root, "virtio3", VIRTIO.sysfs_dir, "virtiofs")
    put(host.root, "/sys/fs/virtiofs/0/tag", "data\n")
    (host.root / "sys/fs/virtiofs/0/device").symlink_to(host.root / device.lstrip("/"))
    put(host.root, "/proc/mounts", "/dev/vda1 / ext4 rw 0 0\nother /mnt virtiofs rw 0 0\ndata /data virtiofs rw 0 0\n")


def _virtiofs_share_on_a_kernel_that_hides_tags(host: FakeHost) -> None:
    add_virtio(host.root, "virtio3", VIRTIO.sysfs_dir, "virtiofs")
    put(host.root, "/proc/mounts", "/dev/vda1 / ext4 rw 0 0\ndata /data virtiofs rw 0 0\n")


def _agent_channel(host: FakeHost) -> None:
    console = add_virtio(host.root, "virtio2", VIRTIO.sysfs_dir, "virtio_console")
    add_virtio_port(host.root, "vport2p1", console, name="org.qemu.guest_agent.0")
    open_file(host.root, 812, 3, "/dev/vport2p1")  # qemu-ga


def _idle_virtio_console(host: FakeHost) -> None:
    console = add_virtio(host.root, "virtio2", VIRTIO.sysfs_dir, "virtio_console")
    add_virtio_port(host.root, "vport2p1", console, name="org.qemu.guest_agent.0")
    open_file(host.root, 812, 3, "/dev/ttyS0")


def _hvc_console(host: FakeHost) -> None:
    console = add_virtio(host.root, "virtio2", VIRTIO.sysfs_dir, "virtio_console")
    add_virtio_port(host.root, "vport2p0", console)
    put(host.root, "/sys/class/tty/console/active", "tty0 hvc0\n")


@pytest.mark.parametrize(
    ("setup", "function", "reason"),
    [
        (_unmounted_disk, NVME, None),
        (_boot_vga, NVME, "it is the boot VGA device (the host console)"),
        (_mounted_partition, NVME, "it backs /dev/nvme0n1p2, which is mounted on /srv"),
        (_mounted_lvm_on_partition, NVME, "it backs /dev/mapper/vg-root, which is mounted on /"),
        (_root_seen_only_by_the_hosts_init, NVME, "it backs /dev/nvme0n1p2, which is mounted on /"),
        (_lvm_seen_only_by_the_hosts_init, NVME, "it backs /dev/mapper/vg-home, which is mounted on /home dir"),
        (_swap, NVME, "it backs /dev/nvme0n1p3, which the host swaps to"),
        (_default_route_nic, NVME, "it is enp1s0, which carries the host's default route"),
        (_default_route_through_a_bridge, NVME, "it is enp1s0, which carries the host's default route (through br0)"),
        (_unmounted_9p_share, VIRTIO, None),
        (_mounted_9p_share, VIRTIO, "it carries the 9p share hostroot, which is mounted on /"),
        (_mounted_virtiofs_share, VIRTIO, "it carries the virtiofs share data, which is mounted on /data"),
        (_virtiofs_share_on_a_kernel_that_hides_tags, VIRTIO,
         "it carries the virtiofs share data, which is mounted on /data"),
        (_agent_channel, VIRTIO, "it is a virtio console whose port org.qemu.guest_agent.0 is open"),
        (_idle_virtio_console, VIRTIO, None),
        (_hvc_console, VIRTIO, "it is a virtio console, and the console hvc0 is in use"),
    ],
)
def test_fake_sysfs_preflight_and_host_iommu_refuse_what_the_host_needs(
    tmp_path: Path, setup: Callable[[FakeHost], None], function: FakePci, reason: str | None
) -> None:
    host = fake_host(tmp_path, (BRIDGE, function))
    setup(host)
    assert messages(plan_for(vfio_spec("01:00.0"), host)) == (
        [f"refusing to take 0000:01:00.0 from the host: {reason}"] if reason else [])
    [group] = iommu_report(host)
    if reason is None:
        assert (group.refusal, group.vfio_lines()) == (None, ["[[vfio]]", 'id = "dev12-0"', 'host = "0000:01:00.0"'])
        return
    refusal = (f"IOMMU group 12 cannot be passed through: 0000:01:00.0 (driver {function.driver}) stays with the "
               f"host: {reason}")
    assert (group.refusal, group.vfio_lines()) == (refusal, [])
    assert refusal in iommu_text([group]).splitlines()
