"""PCI functions as sysfs shows them, and the kernel's rule for what may stay beside a passed device."""

from __future__ import annotations

import attrs

from vmrun.host.system import Host
from vmrun.record import Record

PCI_DEVICES = "/sys/bus/pci/devices"
VFIO_DRIVERS = ("vfio-pci", "pci-stub")  # drivers that leave a device safe to share a group with
HEADER_TYPE_OFFSET = 0x0E  # in config space; bit 7 only says the device has several functions
BRIDGE_HEADERS = {1: "PCI-to-PCI bridge", 2: "CardBus bridge"}
# Without a readable config space (a recorded or hand-made tree) the class tells the same bridges.
BRIDGE_HEADER_BY_CLASS = {"0x0604": 1, "0x0607": 2}


@attrs.frozen(repr=False)
class PciDevice(Record):
    address: str
    driver: str | None
    device_class: str
    group: str | None
    header_type: int

    @property
    def bridge(self) -> str | None:
        """"PCI-to-PCI bridge" or "CardBus bridge" for a type 1 or 2 header; None for an endpoint (type 0),
        whatever its class: a host bridge (0x0600) or an ISA/LPC bridge (0x0601) is an endpoint to the kernel."""
        return BRIDGE_HEADERS.get(self.header_type)

    def may_stay_beside_a_passed_device(self) -> bool:
        """The kernel's rule for a group partner vfio can live with: a bridge (header type 1 or 2), a function
        no host driver holds, or one a VFIO stub holds."""
        return self.bridge is not None or self.driver in (None, *VFIO_DRIVERS)


def _header_type(host: Host, base: str, device_class: str) -> int:
    config = host.read_bytes(f"{base}/config", HEADER_TYPE_OFFSET + 1)
    if config is not None and len(config) > HEADER_TYPE_OFFSET:
        return config[HEADER_TYPE_OFFSET] & 0x7F
    return next((kind for prefix, kind in BRIDGE_HEADER_BY_CLASS.items() if device_class.startswith(prefix)), 0)


def pci_device(host: Host, address: str) -> PciDevice | None:
    base = f"{PCI_DEVICES}/{address}"
    if not host.exists(base):
        return None
    device_class = host.read(f"{base}/class") or ""
    return PciDevice(
        address=address,
        driver=host.link_name(f"{base}/driver"),
        device_class=device_class,
        group=host.link_name(f"{base}/iommu_group"),
        header_type=_header_type(host, base, device_class),
    )


def iommu_groups(host: Host) -> list[str]:
    return host.listdir("/sys/kernel/iommu_groups")


def group_members(host: Host, group: str) -> list[PciDevice]:
    members = (pci_device(host, address) for address in host.listdir(f"/sys/kernel/iommu_groups/{group}/devices"))
    return [member for member in members if member is not None]
