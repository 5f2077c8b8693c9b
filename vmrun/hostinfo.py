"""`vmrun host iommu` and `vmrun host check`: what a host offers, before a spec asks for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from vmrun.facts import QemuProbe, kvm_verdict
from vmrun.host import Host
from vmrun.vfio import BRIDGE_BASE_CLASS, PciDevice, group_members, iommu_groups, is_boot_vga, is_harmless

PCI_IDS = (Path("/usr/share/misc/pci.ids"), Path("/usr/share/hwdata/pci.ids"))
BOOT_VGA_NOTE = "boot VGA: the host's console; not passable"


def _hex_id(host: Host, device_dir: str, name: str) -> str:
    return (host.read(f"{device_dir}/{name}") or "0x????").removeprefix("0x")


def pci_names(wanted: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """"Vendor Device" names from pci.ids for the (vendor, device) ids asked for."""
    names: dict[tuple[str, str], str] = {}
    path = next((candidate for candidate in PCI_IDS if candidate.exists()), None)
    vendors = {vendor for vendor, _ in wanted}
    if path is None:
        return names
    vendor, vendor_name = None, ""
    for line in path.read_text(errors="replace").splitlines():
        if not line or line.startswith("#") or line.startswith("C "):
            continue
        if not line.startswith("\t"):
            vendor, vendor_name = line[:4], line[6:]
        elif vendor in vendors and not line.startswith("\t\t") and (vendor, line[1:5]) in wanted:
            names[(vendor, line[1:5])] = f"{vendor_name} {line[7:]}"
    return names


@attrs.frozen
class GroupDevice:
    address: str
    vendor: str
    device: str
    device_class: str
    driver: str | None
    name: str
    boot_vga: bool = False

    @property
    def passable(self) -> bool:
        """An endpoint a guest can have: not a bridge (host, ISA, PCI: the host's plumbing), not the boot VGA."""
        return not self.device_class.startswith(BRIDGE_BASE_CLASS) and not self.boot_vga


@attrs.frozen
class Group:
    group: str
    viable: bool  # passthrough works as the host is now, with every non-bridge member listed
    devices: tuple[GroupDevice, ...]

    def vfio_lines(self) -> list[str]:
        """The [[vfio]] entries to paste: the group's passable endpoints."""
        lines = []
        for index, device in enumerate(d for d in self.devices if d.passable):
            lines += ["[[vfio]]", f'id = "dev{self.group}-{index}"', f'host = "{device.address}"']
        return lines


def _group_devices(host: Host, members: list[PciDevice]) -> Iterator[tuple[PciDevice, str, str]]:
    for member in members:
        base = f"/sys/bus/pci/devices/{member.address}"
        yield member, _hex_id(host, base, "vendor"), _hex_id(host, base, "device")


def iommu_report(host: Host) -> list[Group]:
    groups = sorted(iommu_groups(host), key=lambda group: int(group) if group.isdigit() else 0)
    members = {group: list(_group_devices(host, group_members(host, group))) for group in groups}
    names = pci_names({(vendor, device) for entries in members.values() for _, vendor, device in entries})
    return [
        Group(
            group=group,
            viable=all(is_harmless(member) for member, _, _ in entries),
            devices=tuple(
                GroupDevice(member.address, vendor, device, member.device_class, member.driver,
                            names.get((vendor, device), "unknown device"), is_boot_vga(host, member.address))
                for member, vendor, device in entries
            ),
        )
        for group, entries in members.items()
    ]


def host_check(host: Host, qemu: QemuProbe) -> dict[str, Any]:
    kvm_usable, kvm_reason = kvm_verdict(host)
    return {
        "kvm": {"usable": kvm_usable, "reason": kvm_reason},
        "vhost_net": host.exists("/dev/vhost-net"),
        "tun": host.exists("/dev/net/tun"),
        "iommu_groups": len(iommu_groups(host)),
        "ksm": host.ksm_stats(),
        "qemu": attrs.asdict(qemu.capabilities) if qemu.capabilities else None,
        "qemu_not_run": qemu.not_run,
    }


IOMMU_OFF = (
    "The IOMMU is off: /sys/kernel/iommu_groups is empty. Enable VT-d/AMD-Vi in the firmware and boot with "
    "intel_iommu=on (Intel) or amd_iommu=on (AMD) to pass devices through with VFIO."
)


def iommu_text(groups: list[Group]) -> str:
    if not groups:
        return IOMMU_OFF
    lines = []
    for group in groups:
        vfio_lines = group.vfio_lines()
        if not vfio_lines:
            verdict = "nothing in it to pass through"
        elif group.viable:
            verdict = "viable as is"
        else:
            verdict = "its devices must leave their host drivers (vmrun does that)"
        lines.append(f"IOMMU group {group.group}: {verdict}")
        lines += [
            f"  {d.address}  {d.vendor}:{d.device}  {d.device_class}  {d.driver or '-':<16} {d.name}"
            + (f"  ({BOOT_VGA_NOTE})" if d.boot_vga else "")
            for d in group.devices
        ]
        if vfio_lines:
            lines += ["  to pass it through, add:", *(f"    {line}" for line in vfio_lines)]
    return "\n".join(lines)


def check_text(report: dict[str, Any]) -> str:
    kvm, ksm, qemu = report["kvm"], report["ksm"], report["qemu"]
    ksm_line = "absent" if ksm is None else f"run = {ksm['run']}, saving {ksm['bytes_saved'] // 2**20} MiB"
    if report["qemu_not_run"]:
        qemu_line = f"not run: {report['qemu_not_run']}"
    elif qemu is None:
        qemu_line = "not found"
    else:
        qemu_line = (f"{qemu['version']} (-run-with user=: {qemu['has_run_with_user']}, -runas: {qemu['has_runas']}, "
                     f"-sandbox: {qemu['has_sandbox']})")
    rows = [
        ("kvm", f"{'usable' if kvm['usable'] else 'not usable'}: {kvm['reason']}"),
        ("vhost-net", "present" if report["vhost_net"] else "absent (/dev/vhost-net): NICs run without vhost"),
        ("tun", "present" if report["tun"] else "absent (/dev/net/tun): no tap devices"),
        ("iommu", f"{report['iommu_groups']} groups" if report["iommu_groups"] else "off"),
        ("ksm", ksm_line),
        ("qemu", qemu_line),
    ]
    return "\n".join(f"{name:<10} {value}" for name, value in rows)
