"""VFIO preflight: IOMMU groups, what the host must keep, the vfio-pci binding, /dev/vfio ownership, memlock.

Binding goes through driver_override + unbind + drivers_probe, so exactly the listed function
changes hands (`new_id` would grab every device with the same vendor:device). Giving it back
uses the same override trick with the original driver, which then binds even where it is not
the device's natural driver.
"""

from __future__ import annotations

import attrs

from vmrun.changes import Action, Change, CheckResult, Found, Step, fail_check, ok_check
from vmrun.facts import HostFacts
from vmrun.host import Host, User
from vmrun.spec import Spec
from vmrun.units import MIB

PCI_DEVICES = "/sys/bus/pci/devices"
DRIVERS_PROBE = "/sys/bus/pci/drivers_probe"
VFIO_DRIVERS = ("vfio-pci", "pci-stub")  # drivers that leave a device safe to share a group with
PCI_BRIDGE_CLASS = "0x0604"  # PCI-to-PCI bridges: the kernel lets them share a group with a passed device
BRIDGE_BASE_CLASS = "0x06"  # every bridge (host, ISA, PCI, ...): part of the host's plumbing, never passed
MEMLOCK_MARGIN = 1024 * MIB  # libvirt's and KubeVirt's: guest RAM + 1 GiB


@attrs.frozen
class PciDevice:
    address: str
    driver: str | None
    device_class: str
    group: str | None


def pci_device(host: Host, address: str) -> PciDevice | None:
    base = f"{PCI_DEVICES}/{address}"
    if not host.exists(base):
        return None
    return PciDevice(
        address=address,
        driver=host.link_name(f"{base}/driver"),
        device_class=host.read(f"{base}/class") or "",
        group=host.link_name(f"{base}/iommu_group"),
    )


def iommu_groups(host: Host) -> list[str]:
    return host.listdir("/sys/kernel/iommu_groups")


def group_members(host: Host, group: str) -> list[PciDevice]:
    members = (pci_device(host, address) for address in host.listdir(f"/sys/kernel/iommu_groups/{group}/devices"))
    return [member for member in members if member is not None]


def is_harmless(device: PciDevice) -> bool:
    """A group partner that does not stop passthrough: no host driver, a VFIO stub, or a bridge."""
    return device.driver in (None, *VFIO_DRIVERS) or device.device_class.startswith(PCI_BRIDGE_CLASS)


# --- what the host itself cannot give away ----------------------------------------------------------


def _is_under(path: str | None, directory: str) -> bool:
    # A virtio NIC's or disk's device link leads below the PCI function (…/0000:00:03.0/virtio2).
    return path is not None and (path == directory or path.startswith(directory + "/"))


def _rows(host: Host, proc_file: str) -> list[list[str]]:
    return [line.split() for line in (host.read(proc_file) or "").splitlines() if line.strip()]


def _stacked_block_devices(host: Host, function: str) -> set[str]:
    """/dev names of the function's disks, their partitions and what is built on them (LVM, dm-crypt, md)."""
    names: set[str] = set()
    pending = [disk for disk in host.listdir("/sys/block") if _is_under(host.resolve(f"/sys/block/{disk}"), function)]
    while pending:
        name = pending.pop()
        if f"/dev/{name}" in names:
            continue
        names.add(f"/dev/{name}")
        block = f"/sys/class/block/{name}"
        pending += host.listdir(f"{block}/holders")
        pending += [child for child in host.listdir(block) if host.exists(f"{block}/{child}/partition")]
        mapper_name = host.read(f"{block}/dm/name")
        if mapper_name:
            names.add(f"/dev/mapper/{mapper_name}")
    return names


def _busy_block_device(host: Host, function: str) -> str | None:
    devices = _stacked_block_devices(host, function)
    if not devices:
        return None

    def held(source: str) -> bool:
        return source in devices or (source.startswith("/dev/") and host.resolve(source) in devices)

    mounted = next((row[0] for row in _rows(host, "/proc/mounts") if held(row[0])), None)
    if mounted:
        return f"it backs {mounted}, which has a mounted filesystem"
    swap = next((row[0] for row in _rows(host, "/proc/swaps")[1:] if held(row[0])), None)
    return f"it backs {swap}, which the host swaps to" if swap else None


def _default_route_interfaces(host: Host) -> list[str]:
    ipv4 = [row[0] for row in _rows(host, "/proc/net/route")[1:] if len(row) > 1 and row[1] == "00000000"]
    ipv6 = [row[9] for row in _rows(host, "/proc/net/ipv6_route") if len(row) > 9 and row[0] == "0" * 32
            and row[1] == "00" and row[9] != "lo"]
    return sorted(set(ipv4 + ipv6))


def _default_route_nic(host: Host, function: str) -> str | None:
    """The function as a NIC carrying the default route, itself or below a bridge, bond or VLAN."""
    pending = [(interface, interface) for interface in _default_route_interfaces(host)]
    seen = set()
    while pending:
        interface, route = pending.pop()
        if interface in seen:
            continue
        seen.add(interface)
        if _is_under(host.resolve(f"/sys/class/net/{interface}/device"), function):
            through = f" (through {route})" if route != interface else ""
            return f"it is {interface}, which carries the host's default route{through}"
        lower = [entry.removeprefix("lower_") for entry in host.listdir(f"/sys/class/net/{interface}")
                 if entry.startswith("lower_")]
        pending += [(name, route) for name in lower]
    return None


def is_boot_vga(host: Host, address: str) -> bool:
    """The display the firmware and the host's console use."""
    return host.read(f"{PCI_DEVICES}/{address}/boot_vga") == "1"


def why_host_needs(host: Host, address: str) -> str | None:
    """A reason taking this function from its host driver would hurt the host itself, or None."""
    if is_boot_vga(host, address):
        return "it is the boot VGA device (the host console)"
    function = host.resolve(f"{PCI_DEVICES}/{address}")
    if function is None:
        return None
    return _busy_block_device(host, function) or _default_route_nic(host, function)


# --- the checks ---------------------------------------------------------------------------------


def _bind_changes(host: Host, device: PciDevice) -> Found:
    base = f"{PCI_DEVICES}/{device.address}"
    override = f"{base}/driver_override"
    previous = host.read(override)
    probe = Step(Action.WRITE, DRIVERS_PROBE, device.address)
    give_back = (Step(Action.WRITE, override, device.driver), probe) if device.driver else ()
    # Undone newest first: leave vfio-pci, then hand the device to its old driver, then the old override.
    yield Change(
        Step(Action.WRITE, override, "vfio-pci"),
        (*give_back, Step(Action.WRITE, override, "\n" if previous in (None, "(null)") else previous)),
    )
    if device.driver is not None:
        yield Change(Step(Action.WRITE, f"{base}/driver/unbind", device.address))
    yield Change(probe, (Step(Action.WRITE, "/sys/bus/pci/drivers/vfio-pci/unbind", device.address),))


def _refusal(host: Host, facts: HostFacts, device: PciDevice, group: str, listed: set[str]) -> str | None:
    if device.driver not in VFIO_DRIVERS:
        reason = why_host_needs(host, device.address)
        if reason:
            return f"refusing to take {device.address} from the host: {reason}"
    offenders = [m for m in group_members(host, group) if m.address not in listed and not is_harmless(m)]
    if offenders:
        described = ", ".join(f"{member.address} (driver {member.driver})" for member in offenders)
        return (f"IOMMU group {group} also holds {described}: list them in [[vfio]] too, "
                "or unbind them from their host drivers")
    if device.driver != "vfio-pci" and not facts.drop_privileges:
        return f"{device.address} is bound to {device.driver or 'no driver'} and only root can bind it to vfio-pci"
    return None


def _group_node(spec: Spec, host: Host, facts: HostFacts, group: str, user: User | None) -> Found:
    node = f"/dev/vfio/{group}"
    if not facts.drop_privileges:
        if not host.can_open(node):
            yield fail_check("vfio", f"{node} is not readable and writable by this user (sudo chown $USER {node})")
        return
    owned = host.ownership(node) if host.exists(node) else "0:0"  # the kernel creates it root's
    if user is None or owned != f"{user.uid}:{user.gid}":
        yield Change(Step(Action.CHOWN, node, spec.host.user), (Step(Action.CHOWN, node, owned),))


def check_vfio(spec: Spec, host: Host, facts: HostFacts, user: User | None) -> Found:
    if not spec.vfio:
        return
    groups = iommu_groups(host)
    if not groups:
        yield fail_check("iommu", "the IOMMU is off (/sys/kernel/iommu_groups is empty): enable VT-d/AMD-Vi in the "
                                  "firmware and boot with intel_iommu=on or amd_iommu=on")
        return
    yield ok_check("iommu", f"the IOMMU is on ({len(groups)} groups)")
    listed = {vfio.host for vfio in spec.vfio}
    passed_groups: list[str] = []
    binding = False
    for vfio in spec.vfio:
        name, device = f"vfio {vfio.id}", pci_device(host, vfio.host)
        if device is None:
            yield fail_check(name, f"no PCI device {vfio.host} on this host (lspci -D lists them)")
            continue
        if device.group is None:
            yield fail_check(name, f"{device.address} is in no IOMMU group")
            continue
        refusal = _refusal(host, facts, device, device.group, listed)
        if refusal:
            yield fail_check(name, refusal)
            continue
        if device.group not in passed_groups:
            passed_groups.append(device.group)
        if device.driver == "vfio-pci":
            yield ok_check(name, f"{device.address} is bound to vfio-pci (IOMMU group {device.group})")
            continue
        binding = True
        yield ok_check(name, f"binding {device.address} to vfio-pci (IOMMU group {device.group}); down gives it "
                             f"back to {device.driver or 'no driver'}")
        yield from _bind_changes(host, device)
    if binding and not host.exists("/sys/bus/pci/drivers/vfio-pci"):
        yield fail_check("vfio", "the vfio-pci driver is not loaded (modprobe vfio-pci)")
    # After every bind: the kernel makes /dev/vfio/N once a device of group N is bound to vfio-pci.
    for group in passed_groups:
        yield from _group_node(spec, host, facts, group, user)


def _mib(size: int | None) -> str:
    return "unlimited" if size is None else f"{size // MIB} MiB"


def check_memlock(spec: Spec, host: Host, facts: HostFacts) -> tuple[CheckResult | None, int | None]:
    """VFIO pins all guest RAM: the check, and the RLIMIT_MEMLOCK the launcher must give qemu (None: as is)."""
    if not spec.vfio:
        return None, None
    needed = spec.machine.memory + MEMLOCK_MARGIN
    soft, hard = host.memlock_limits()
    if soft is None or soft >= needed:
        return ok_check("memlock", f"RLIMIT_MEMLOCK ({_mib(soft)}) covers guest RAM + 1 GiB ({_mib(needed)})"), None
    if facts.drop_privileges or hard is None or hard >= needed:
        message = f"qemu gets RLIMIT_MEMLOCK = {_mib(needed)} (guest RAM + 1 GiB; now {_mib(soft)})"
        return ok_check("memlock", message), needed
    return fail_check("memlock", f"RLIMIT_MEMLOCK is {_mib(soft)} (hard limit {_mib(hard)}) but VFIO pins guest RAM "
                                 f"+ 1 GiB = {_mib(needed)}: raise memlock in /etc/security/limits.conf, or run vmrun "
                                 "as root"), None
