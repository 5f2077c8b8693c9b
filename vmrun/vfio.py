"""VFIO preflight: IOMMU groups, what may be unbound, the vfio-pci binding and /dev/vfio ownership.

Binding goes through driver_override + unbind + drivers_probe, so exactly the listed function
changes hands (`new_id` would grab every device with the same vendor:device).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import attrs

from vmrun.host import Host
from vmrun.preflight import MEMLOCK_MARGIN, PCI_BRIDGE_CLASS, VFIO_DRIVERS, Change, Found, Step, fail_check, ok_check
from vmrun.render import HostFacts
from vmrun.spec import Spec
from vmrun.units import MIB

PCI_DEVICES = "/sys/bus/pci/devices"


@attrs.frozen
class PciDevice:
    address: str
    driver: str | None
    device_class: str
    group: str | None


def _link_name(host: Host, host_path: str) -> str | None:
    try:
        return Path(os.readlink(host.path(host_path))).name
    except OSError:
        return None


def pci_device(host: Host, address: str) -> PciDevice | None:
    base = f"{PCI_DEVICES}/{address}"
    if not host.exists(base):
        return None
    return PciDevice(
        address=address,
        driver=_link_name(host, f"{base}/driver"),
        device_class=host.read(f"{base}/class") or "",
        group=_link_name(host, f"{base}/iommu_group"),
    )


def iommu_groups(host: Host) -> list[str]:
    return host.listdir("/sys/kernel/iommu_groups")


def group_members(host: Host, group: str) -> list[PciDevice]:
    members = (pci_device(host, address) for address in host.listdir(f"/sys/kernel/iommu_groups/{group}/devices"))
    return [member for member in members if member is not None]


def is_harmless(device: PciDevice) -> bool:
    """A group partner that does not stop passthrough: no host driver, a VFIO stub, or a bridge."""
    return device.driver in (None, *VFIO_DRIVERS) or device.device_class.startswith(PCI_BRIDGE_CLASS)


def _real_dir(host: Host, host_path: str) -> Path | None:
    try:
        return host.path(host_path).resolve(strict=True)
    except OSError:
        return None


def _block_devices_of(host: Host, device_dir: Path) -> list[str]:
    names = []
    for block in host.listdir("/sys/block"):
        target = _real_dir(host, f"/sys/block/{block}")
        if target is not None and target.is_relative_to(device_dir):
            names.append(block)
    return names


def _mounted(host: Host, block: str) -> bool:
    mounts = host.read("/proc/mounts") or ""
    return any(line.split()[0].startswith(f"/dev/{block}") for line in mounts.splitlines() if line.split())


def _default_route_interfaces(host: Host) -> list[str]:
    routes = (host.read("/proc/net/route") or "").splitlines()[1:]
    return [fields[0] for fields in (line.split() for line in routes) if len(fields) > 1 and fields[1] == "00000000"]


def why_host_needs(host: Host, address: str) -> str | None:
    """A reason unbinding this function would hurt the host itself, or None."""
    base = f"{PCI_DEVICES}/{address}"
    device_dir = _real_dir(host, base)
    if host.read(f"{base}/boot_vga") == "1":
        return "it is the boot VGA device (the host console)"
    if device_dir is None:
        return None
    for block in _block_devices_of(host, device_dir):
        if _mounted(host, block):
            return f"it backs /dev/{block}, which has a mounted filesystem"
    for interface in _default_route_interfaces(host):
        if _real_dir(host, f"/sys/class/net/{interface}/device") == device_dir:
            return f"it is {interface}, which carries the host's default route"
    return None


def _bind_changes(device: PciDevice) -> Iterator[Change]:
    base = f"{PCI_DEVICES}/{device.address}"
    probe = Step("write", "/sys/bus/pci/drivers_probe", device.address)
    # Undone newest first: leave vfio-pci, then clear the override and let the old driver probe it.
    yield Change(Step("write", f"{base}/driver_override", "vfio-pci"),
                 (Step("write", f"{base}/driver_override", "\n"), probe))
    if device.driver is not None:
        yield Change(Step("write", f"{base}/driver/unbind", device.address))
    yield Change(probe, (Step("write", "/sys/bus/pci/drivers/vfio-pci/unbind", device.address),))


def check_vfio(spec: Spec, host: Host, facts: HostFacts) -> Found:
    if not spec.vfio:
        return
    if not iommu_groups(host):
        yield fail_check("iommu", "the IOMMU is off (/sys/kernel/iommu_groups is empty): enable VT-d/AMD-Vi in the "
                             "firmware and boot with intel_iommu=on or amd_iommu=on")
        return
    yield ok_check("iommu", f"{len(iommu_groups(host))} IOMMU groups")
    listed = {vfio.host for vfio in spec.vfio}
    groups_done: set[str] = set()
    for vfio in spec.vfio:
        yield from _check_function(spec, host, facts, vfio.id, vfio.host, listed, groups_done)
    yield from _check_memlock(spec, host, facts)


def _check_function(
    spec: Spec, host: Host, facts: HostFacts, vfio_id: str, address: str, listed: set[str], groups_done: set[str]
) -> Found:
    name = f"vfio {vfio_id}"
    device = pci_device(host, address)
    if device is None:
        yield fail_check(name, f"no PCI device {address} on this host (lspci -D lists them)")
        return
    if device.group is None:
        yield fail_check(name, f"{address} has no IOMMU group")
        return
    offenders = [
        member for member in group_members(host, device.group)
        if member.address not in listed and not is_harmless(member)
    ]
    if offenders:
        described = ", ".join(f"{member.address} (driver {member.driver})" for member in offenders)
        yield fail_check(name, f"IOMMU group {device.group} also holds {described}: list them in [[vfio]] too, "
                          "or unbind them from their host drivers")
        return
    reason = why_host_needs(host, address) if device.driver not in VFIO_DRIVERS else None
    if reason:
        yield fail_check(name, f"refusing to take {address} from the host: {reason}")
        return
    if device.driver == "vfio-pci":
        yield ok_check(name, f"{address} is already bound to vfio-pci (group {device.group})")
    else:
        yield ok_check(name, f"binding {address} (driver {device.driver or 'none'}) to vfio-pci, group {device.group}")
        yield from _bind_changes(device)
    if facts.drop_privileges and device.group not in groups_done:
        groups_done.add(device.group)
        node = f"/dev/vfio/{device.group}"
        previous = host.owner(node) if host.exists(node) else "root"
        yield Change(Step("chown", node, spec.host.user), (Step("chown", node, previous),))


def memlock_needed(spec: Spec, facts: HostFacts) -> int | None:
    """VFIO pins all guest RAM: the limit qemu needs, when vmrun (as root) can give it."""
    if not spec.vfio or not facts.drop_privileges:
        return None
    return spec.machine.memory + MEMLOCK_MARGIN


def _check_memlock(spec: Spec, host: Host, facts: HostFacts) -> Found:
    needed = spec.machine.memory + MEMLOCK_MARGIN
    if facts.drop_privileges:
        yield ok_check("memlock", f"qemu gets RLIMIT_MEMLOCK = {needed // MIB} MiB (guest RAM + 1 GiB)")
        return
    soft = host.memlock_limit()
    if soft is not None and soft < needed:
        yield fail_check("memlock", f"RLIMIT_MEMLOCK is {soft // MIB} MiB, VFIO needs {needed // MIB} MiB "
                               "(raise it in /etc/security/limits.conf or run vmrun as root)")
    else:
        yield ok_check("memlock", "RLIMIT_MEMLOCK covers guest RAM + 1 GiB")
