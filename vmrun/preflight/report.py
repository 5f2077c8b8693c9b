"""`vmrun host iommu` and `vmrun host check`: what a host offers, before a spec asks for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from vmrun.host.facts import PrivilegeDrop, QemuProbe, choose_privilege_drop, kvm_verdict
from vmrun.host.pci import PCI_DEVICES, iommu_groups
from vmrun.host.system import HUGEPAGES_DIR, NODE_DIR, Host, QemuCapabilities, format_cpu_list
from vmrun.preflight.vfio import Member, group_refusal, group_verdict
from vmrun.record import Record

PCI_IDS = (Path("/usr/share/misc/pci.ids"), Path("/usr/share/hwdata/pci.ids"))


def _pci_ids(host: Host, address: str) -> tuple[str, str]:
    """(vendor, device) as pci.ids writes them, four hex digits each."""
    vendor, device = ((host.read(f"{PCI_DEVICES}/{address}/{name}") or "0x????").removeprefix("0x")
                      for name in ("vendor", "device"))
    return vendor, device


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


@attrs.frozen(repr=False)
class GroupDevice(Record):
    address: str
    vendor: str
    device: str
    device_class: str
    driver: str | None
    name: str
    bridge: str | None  # "PCI-to-PCI bridge", "CardBus bridge" (header type 1, 2): stays with the host
    host_needs: str | None  # why the host keeps it, as preflight says it
    passable: bool  # a spec may list it, unless its group has a refusal


@attrs.frozen(repr=False)
class Group(Record):
    group: str
    viable: bool  # every member may stay beside a passed device as the host is now: no driver to unbind
    refusal: str | None  # why preflight refuses the group whatever is listed, or None
    devices: tuple[GroupDevice, ...]

    def vfio_lines(self) -> list[str]:
        """The [[vfio]] entries to paste: every passable function, which preflight then accepts."""
        if self.refusal:
            return []
        lines = []
        for index, device in enumerate(d for d in self.devices if d.passable):
            lines += ["[[vfio]]", f'id = "dev{self.group}-{index}"', f'host = "{device.address}"']
        return lines


def _group(group: str, members: tuple[Member, ...], ids: dict[str, tuple[str, str]],
           names: dict[tuple[str, str], str]) -> Group:
    devices = tuple(
        GroupDevice(m.device.address, *ids[m.device.address], m.device.device_class, m.device.driver,
                    names.get(ids[m.device.address], "unknown device"), m.device.bridge, m.host_needs, m.passable)
        for m in members
    )
    return Group(
        group=group,
        viable=all(member.device.may_stay_beside_a_passed_device() for member in members),
        refusal=group_refusal(group, members, {m.device.address for m in members if m.passable}),
        devices=devices,
    )


def iommu_report(host: Host) -> list[Group]:
    groups = sorted(iommu_groups(host), key=lambda group: int(group) if group.isdigit() else 0)
    verdicts = {group: group_verdict(host, group) for group in groups}
    ids = {m.device.address: _pci_ids(host, m.device.address) for members in verdicts.values() for m in members}
    names = pci_names(set(ids.values()))
    return [_group(group, members, ids, names) for group, members in verdicts.items()]


def qemu_user_line(*, vmrun_is_root: bool, capabilities: QemuCapabilities | None) -> str:
    """Who qemu runs as, said before a spec asks: the privilege drop, and what it takes to keep root."""
    if not vmrun_is_root:
        return "vmrun is not root: qemu runs as the user who runs vmrun"
    keep_root = 'host.user = "root" keeps it root only with host.allow_root = true'
    drop = choose_privilege_drop(capabilities)
    if drop is PrivilegeDrop.IMPOSSIBLE:
        return f"this qemu has {drop}: up refuses to start it as root unless {keep_root}"
    assumed = "" if capabilities else " (assumed: qemu was not asked)"
    return f"qemu leaves root for host.user with {drop}{assumed}; {keep_root}"


def _page_size(pool_dir: str) -> str:
    """"hugepages-2048kB" -> "2M", as machine.hugepages writes it."""
    kib = int(pool_dir.removeprefix("hugepages-").removesuffix("kB"))
    return f"{kib // 1024**2}G" if kib % 1024**2 == 0 else f"{kib // 1024}M"


def hugepage_pools(host: Host) -> list[dict[str, Any]]:
    """Each huge page pool, system-wide (node None) and per NUMA node: its size, total and free pages."""
    pools = []
    nodes = [None, *sorted(host.numa_nodes()[0])] if host.exists(NODE_DIR) else [None]
    for node in nodes:
        where = HUGEPAGES_DIR if node is None else f"{NODE_DIR}/node{node}/hugepages"
        for pool_dir in host.listdir(where):
            counts = host.hugepage_counts(f"{where}/{pool_dir}")
            if counts is not None:
                pools.append({"size": _page_size(pool_dir), "node": node, "total": counts["total"],
                              "free": counts["free"]})
    return pools


def host_report(host: Host, qemu: QemuProbe) -> dict[str, Any]:
    kvm_usable, kvm_reason = kvm_verdict(host)
    cpus, nodes = host.cpus(), host.numa_nodes()
    return {
        "cpus": {"present": sorted(cpus[0]), "online": sorted(cpus[1])},
        "numa_nodes": {"present": sorted(nodes[0]), "online": sorted(nodes[1])},
        "hugepages": hugepage_pools(host),
        "kvm": {"usable": kvm_usable, "reason": kvm_reason},
        "vhost_net": host.exists("/dev/vhost-net"),
        "tun": host.exists("/dev/net/tun"),
        "iommu_groups": len(iommu_groups(host)),
        "ksm": host.ksm_stats(),
        "qemu": attrs.asdict(qemu.capabilities) if qemu.capabilities else None,
        "qemu_not_run": qemu.not_run,
        "qemu_user": qemu_user_line(vmrun_is_root=host.is_root_user(), capabilities=qemu.capabilities),
    }


IOMMU_OFF = (
    "The IOMMU is off: /sys/kernel/iommu_groups is empty. Enable VT-d/AMD-Vi in the firmware and boot with "
    "intel_iommu=on (Intel) or amd_iommu=on (AMD) to pass devices through with VFIO."
)


def _verdict(group: Group) -> str:
    if group.refusal:
        return group.refusal
    if not group.vfio_lines():
        return f"IOMMU group {group.group}: nothing in it to pass through"
    if group.viable:
        return f"IOMMU group {group.group}: viable as is"
    return f"IOMMU group {group.group}: its devices must leave their host drivers (vmrun does that)"


def iommu_text(groups: list[Group]) -> str:
    if not groups:
        return IOMMU_OFF
    lines = []
    for group in groups:
        vfio_lines = group.vfio_lines()
        lines.append(_verdict(group))
        lines += [
            f"  {d.address}  {d.vendor}:{d.device}  {d.device_class}  {d.driver or '-':<16} {d.name}"
            + (f"  (stays with the host: {d.host_needs})" if d.host_needs else "")
            for d in group.devices
        ]
        if vfio_lines:
            lines += ["  to pass it through, add:", *(f"    {line}" for line in vfio_lines)]
    return "\n".join(lines)


def _online_line(numbers: dict[str, list[int]]) -> str:
    offline = set(numbers["present"]) - set(numbers["online"])
    return format_cpu_list(set(numbers["online"])) + (f" online, {format_cpu_list(offline)} offline" if offline else
                                                      " online")


def _pool_line(pool: dict[str, Any]) -> str:
    where = "" if pool["node"] is None else f" node {pool['node']}"
    return f"{pool['size']}{where} {pool['free']}/{pool['total']} free"


def report_text(report: dict[str, Any]) -> str:
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
        ("cpus", _online_line(report["cpus"])),
        ("numa", _online_line(report["numa_nodes"])),
        ("hugepages", "; ".join(map(_pool_line, report["hugepages"])) or "none"),
        ("qemu", qemu_line),
        ("qemu user", report["qemu_user"]),
    ]
    return "\n".join(f"{name:<10} {value}" for name, value in rows)
