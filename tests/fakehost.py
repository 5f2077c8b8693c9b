"""A fake host tree laid out as Linux's sysfs is, and a fake kernel that reacts to writes as Linux does.

Symlinks are relative and point where the kernel's do: bus/pci/devices/ADDR -> devices/pci0000:00/ADDR,
ADDR/iommu_group -> kernel/iommu_groups/N, ADDR/driver -> bus/pci/drivers/NAME. Writing drivers_probe
honours driver_override; /dev/vfio/N exists while a device of group N is bound to vfio-pci.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from vmrun.host import Host

DEVICES = "sys/devices/pci0000:00"


@attrs.frozen
class FakePci:
    address: str
    group: str
    driver: str | None = "nvme"
    device_class: str = "0x010802"
    boot_vga: bool = False


def _link(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def build_host_tree(root: Path, devices: list[FakePci], *, ksm_run: str = "0") -> Path:
    for device in devices:
        directory = root / DEVICES / device.address
        directory.mkdir(parents=True)
        for name, value in (("vendor", "0x144d"), ("device", "0xa808"), ("class", device.device_class),
                            ("driver_override", "(null)")):
            (directory / name).write_text(value + "\n")
        if device.boot_vga:
            (directory / "boot_vga").write_text("1\n")
        _link(root / "sys/bus/pci/devices" / device.address, f"../../../devices/pci0000:00/{device.address}")
        _link(directory / "iommu_group", f"../../../kernel/iommu_groups/{device.group}")
        _link(root / "sys/kernel/iommu_groups" / device.group / "devices" / device.address,
              f"../../../../devices/pci0000:00/{device.address}")
        if device.driver:
            bind(root, device.address, device.driver)
    for name in ("bind", "unbind"):  # vfio-pci is loaded, as it must be for passthrough
        (root / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True, exist_ok=True)
        (root / "sys/bus/pci/drivers/vfio-pci" / name).touch()
    (root / "sys/kernel/iommu_groups").mkdir(parents=True, exist_ok=True)
    (root / "sys/bus/pci/drivers_probe").write_text("")
    (root / "sys/kernel/mm/ksm").mkdir(parents=True)
    (root / "sys/kernel/mm/ksm/run").write_text(ksm_run + "\n")
    (root / "dev/vfio").mkdir(parents=True)
    (root / "dev/vfio/vfio").write_text("")
    (root / "proc/net").mkdir(parents=True)
    (root / "proc/mounts").write_text("/dev/vda1 / ext4 rw 0 0\n")
    (root / "proc/net/route").write_text("Iface\tDestination\tGateway\n")
    return root


def bind(root: Path, address: str, driver: str) -> None:
    driver_dir = root / "sys/bus/pci/drivers" / driver
    for name in ("bind", "unbind"):
        driver_dir.mkdir(parents=True, exist_ok=True)
        (driver_dir / name).touch()
    _link(root / DEVICES / address / "driver", f"../../../bus/pci/drivers/{driver}")


def snapshot(root: Path) -> dict[str, str]:
    """Every file's content and every link's target: two equal snapshots mean an untouched tree."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = "-> " + os.readlink(path)
        elif path.is_file():
            state[key] = path.read_text() + f" [owner {path.stat().st_uid}]"
    return state


@attrs.frozen
class FakeKernelHost(Host):
    """Host(root) whose sysfs writes have the kernel's effects; records every write."""

    natural_drivers: dict[str, str] = attrs.field(factory=dict)  # what probing binds without an override
    fail_on: str | None = None  # a path whose write fails, as a stuck driver would
    writes: list[tuple[str, str]] = attrs.field(factory=list)

    def write(self, host_path: str | Path, value: str) -> None:
        path = str(host_path)
        if path == self.fail_on:
            raise OSError(16, "Device or resource busy", path)
        self.writes.append((path, value))
        if path.endswith("/driver_override"):
            super().write(path, "(null)\n" if value.strip() == "" else value + "\n")
        elif path.endswith("/unbind"):
            (self.root / DEVICES / value / "driver").unlink()
        elif path == "/sys/bus/pci/drivers_probe":
            self._probe(value)
        else:
            super().write(path, value)
        self._update_vfio_nodes()

    def _probe(self, address: str) -> None:
        device = self.root / DEVICES / address
        if (device / "driver").is_symlink():
            return
        override = (device / "driver_override").read_text().strip()
        driver = override if override != "(null)" else self.natural_drivers.get(address)
        if driver:
            bind(self.root, address, driver)

    def _update_vfio_nodes(self) -> None:
        for group in (self.root / "sys/kernel/iommu_groups").iterdir():
            node = self.root / "dev/vfio" / group.name
            bound = any(
                os.readlink(member / "driver").endswith("/vfio-pci")
                for member in (group / "devices").iterdir() if (member / "driver").is_symlink()
            )
            if bound and not node.exists():
                node.write_text("")
            elif not bound and node.exists():
                node.unlink()
