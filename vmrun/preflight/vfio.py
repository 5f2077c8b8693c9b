"""VFIO preflight: IOMMU groups, what the host must keep, the vfio-pci binding, /dev/vfio ownership, memlock.

Binding goes through driver_override + unbind + drivers_probe, so exactly the listed function
changes hands (`new_id` would grab every device with the same vendor:device). Giving it back
uses the same override trick with the original driver, which then binds even where it is not
the device's natural driver.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from vmrun.host.facts import HostFacts
from vmrun.host.in_use import why_host_needs
from vmrun.host.pci import PCI_DEVICES, VFIO_DRIVERS, PciDevice, group_members, iommu_groups, pci_device
from vmrun.host.system import Host, User
from vmrun.preflight.changes import Action, Change, Finding, Found, Step, fail_finding, ok_finding
from vmrun.record import Record
from vmrun.spec.model import Spec
from vmrun.units import MIB

DRIVERS_PROBE = "/sys/bus/pci/drivers_probe"
MEMLOCK_MARGIN = 1024 * MIB  # libvirt's and KubeVirt's: guest RAM + 1 GiB


# --- what a group offers: one verdict for `host iommu` and for preflight ------------------------------


@attrs.frozen(repr=False)
class Member(Record):
    device: PciDevice
    host_needs: str | None  # why the host keeps this function; None for a bridge, or one a VFIO driver holds

    @property
    def passable(self) -> bool:
        """A function a spec may list: an endpoint the host can spare."""
        return self.device.bridge is None and self.host_needs is None


def _member(host: Host, device: PciDevice) -> Member:
    # A bridge is never passed, and a function already on a VFIO driver has been given away.
    needed = device.bridge is None and device.driver not in VFIO_DRIVERS
    return Member(device, why_host_needs(host, device.address) if needed else None)


def group_verdict(host: Host, group: str) -> tuple[Member, ...]:
    """Every function of the group, each with what the host needs it for."""
    return tuple(_member(host, device) for device in group_members(host, group))


def _described(device: PciDevice) -> str:
    return f"{device.address} (driver {device.driver})"


def group_refusal(group: str, members: tuple[Member, ...], listed: set[str]) -> str | None:
    """Why passing the listed functions of this group cannot work, or None: a function the host needs keeps
    the group while its host driver holds it; any other must be listed too, or leave its driver first."""
    kept = [m for m in members if m.host_needs and not m.device.may_stay_beside_a_passed_device()]
    if kept:
        return f"IOMMU group {group} cannot be passed through: " + "; ".join(
            f"{_described(m.device)} stays with the host: {m.host_needs}" for m in kept)
    offenders = [m.device for m in members if m.device.address not in listed
                 and not m.device.may_stay_beside_a_passed_device()]
    if offenders:
        return (f"IOMMU group {group} also holds {', '.join(map(_described, offenders))}: list them in [[vfio]] "
                "too, or unbind them from their host drivers")
    return None


# --- the findings ---------------------------------------------------------------------------------


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


def _refusal(
    host: Host, facts: HostFacts, device: PciDevice, group: str, listed: set[str], held_by: Mapping[str, str]
) -> str | None:
    if device.bridge:
        return (f"refusing to pass {device.address}: it is a {device.bridge} (header type {device.header_type}), "
                "which vfio-pci does not bind: list the devices behind it instead")
    members = group_verdict(host, group)
    own = next((m for m in members if m.device.address == device.address), None) or _member(host, device)
    if own.host_needs:
        return f"refusing to take {device.address} from the host: {own.host_needs}"
    holder = held_by.get(device.address)
    if holder:
        return f"{device.address} is held by VM {holder}: vmrun down {holder} first, or pass another device"
    partner = next((m.device.address for m in members if m.device.address in held_by), None)
    if partner:
        return (f"IOMMU group {group} is held by VM {held_by[partner]}, which passes {partner}: "
                "a group goes to one VM at a time")
    refusal = group_refusal(group, members, listed)
    if refusal:
        return refusal
    if device.driver != "vfio-pci" and not facts.drop_privileges:
        return f"{device.address} is bound to {device.driver or 'no driver'} and only root can bind it to vfio-pci"
    return None


def _group_node(spec: Spec, host: Host, facts: HostFacts, group: str, user: User | None) -> Found:
    node = f"/dev/vfio/{group}"
    if not facts.drop_privileges:
        if not host.can_open(node):
            yield fail_finding("vfio", f"{node} is not readable and writable by this user (sudo chown $USER {node})")
        return
    owned = host.ownership(node) if host.exists(node) else "0:0"  # the kernel creates it root's
    if user is None or owned != f"{user.uid}:{user.gid}":
        yield Change(Step(Action.CHOWN, node, spec.host.user), (Step(Action.CHOWN, node, owned),))


def inspect_vfio(spec: Spec, host: Host, facts: HostFacts, user: User | None, held_by: Mapping[str, str]) -> Found:
    """held_by: the PCI functions other vmrun VMs pass (address -> VM): a group opens for one qemu at a time."""
    if not spec.vfio:
        return
    groups = iommu_groups(host)
    if not groups:
        yield fail_finding("iommu", "the IOMMU is off (/sys/kernel/iommu_groups is empty): enable VT-d/AMD-Vi in the "
                                  "firmware and boot with intel_iommu=on or amd_iommu=on")
        return
    yield ok_finding("iommu", f"the IOMMU is on ({len(groups)} groups)")
    listed = {vfio.host for vfio in spec.vfio}
    passed_groups: list[str] = []
    binding = False
    for vfio in spec.vfio:
        name, device = f"vfio {vfio.id}", pci_device(host, vfio.host)
        if device is None:
            yield fail_finding(name, f"no PCI device {vfio.host} on this host (lspci -D lists them)")
            continue
        if device.group is None:
            yield fail_finding(name, f"{device.address} is in no IOMMU group")
            continue
        refusal = _refusal(host, facts, device, device.group, listed, held_by)
        if refusal:
            yield fail_finding(name, refusal)
            continue
        if device.group not in passed_groups:
            passed_groups.append(device.group)
        if device.driver == "vfio-pci":
            yield ok_finding(name, f"{device.address} is bound to vfio-pci (IOMMU group {device.group})")
            continue
        binding = True
        yield ok_finding(name, f"binding {device.address} to vfio-pci (IOMMU group {device.group}); down gives it "
                             f"back to {device.driver or 'no driver'}")
        yield from _bind_changes(host, device)
    if binding and not host.exists("/sys/bus/pci/drivers/vfio-pci"):
        yield fail_finding("vfio", "the vfio-pci driver is not loaded (modprobe vfio-pci)")
    # After every bind: the kernel makes /dev/vfio/N once a device of group N is bound to vfio-pci.
    for group in passed_groups:
        yield from _group_node(spec, host, facts, group, user)


def _mib(size: int | None) -> str:
    return "unlimited" if size is None else f"{size // MIB} MiB"


def inspect_memlock(spec: Spec, host: Host, facts: HostFacts) -> tuple[Finding | None, int | None]:
    """VFIO pins all guest RAM: the check, and the RLIMIT_MEMLOCK the launcher must give qemu (None: as is)."""
    if not spec.vfio:
        return None, None
    needed = spec.machine.memory + MEMLOCK_MARGIN
    soft, hard = host.memlock_limits()
    if soft is None or soft >= needed:
        return ok_finding("memlock", f"RLIMIT_MEMLOCK ({_mib(soft)}) covers guest RAM + 1 GiB ({_mib(needed)})"), None
    if facts.drop_privileges or hard is None or hard >= needed:
        message = f"qemu gets RLIMIT_MEMLOCK = {_mib(needed)} (guest RAM + 1 GiB; now {_mib(soft)})"
        return ok_finding("memlock", message), needed
    return fail_finding("memlock", f"RLIMIT_MEMLOCK is {_mib(soft)} (hard limit {_mib(hard)}) but VFIO pins guest RAM "
                                 f"+ 1 GiB = {_mib(needed)}: raise memlock in /etc/security/limits.conf, or run vmrun "
                                 "as root"), None
