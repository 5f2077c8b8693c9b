"""Names vmrun derives when a spec leaves them out: stable, so a VM keeps them across runs."""

from __future__ import annotations

import re

import attrs

from vmrun.spec.model import Nic, NicMode, Spec
from vmrun.spec.vmname import is_vm_name

IFNAMSIZ = 15  # bytes of an interface name, without the kernel's trailing NUL
# The one rule for VM names, from a spec or the command line, before a name becomes a path or a tap.
DEVICE_ID = re.compile(r"[a-z][a-z0-9_-]{0,30}")  # disks, NICs, shares, VFIO devices: qemu ids, parts of tap names
# Neither VM names nor device ids contain a dot, so "<vm>.<nic>" splits one way only: two VMs cannot derive
# the same readable tap. Hashed names ("vm" + hex) have no dot, so they cannot meet a readable one.
TAP_SEPARATOR = "."
_PCI_ADDRESS = re.compile(r"(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")


def _digest(*parts: str) -> str:
    import hashlib  # OpenSSL costs ~3 ms to load; most specs name their taps and MACs

    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def is_device_id(name: str) -> bool:
    return DEVICE_ID.fullmatch(name) is not None


def with_derived_names(spec: Spec) -> Spec:
    """Every NIC with the tap and MAC the rest of vmrun uses, filled in once when the spec is loaded: as given
    (a MAC lower-cased), else derived from the VM's and the NIC's names. A name that breaks its rule derives
    nothing: the checks refuse the spec for that name alone."""
    if not is_vm_name(spec.name) or not spec.nics:
        return spec
    nics = tuple(_with_derived_names(spec.name, nic) if is_device_id(nic.id) else nic for nic in spec.nics)
    return spec if nics == spec.nics else attrs.evolve(spec, nics=nics)


def _with_derived_names(vm: str, nic: Nic) -> Nic:
    tap = nic.tap if nic.tap is not None or nic.mode is not NicMode.TAP else _derived_tap(vm, nic.id)
    mac = nic.mac.lower() if nic.mac is not None else _derived_mac(vm, nic.id)
    return nic if (tap, mac) == (nic.tap, nic.mac) else attrs.evolve(nic, tap=tap, mac=mac)


def _derived_tap(vm: str, nic: str) -> str:
    """"<vm>.<nic>", else "vm" + a hash of both that fits IFNAMSIZ."""
    readable = f"{vm}{TAP_SEPARATOR}{nic}"
    if len(readable.encode()) <= IFNAMSIZ:
        return readable
    return "vm" + _digest(vm, nic)[: IFNAMSIZ - 2]


def _derived_mac(vm: str, nic: str) -> str:
    """52:54:00 (QEMU's locally administered prefix) + a stable hash."""
    digest = _digest(vm, nic)
    return "52:54:00:" + ":".join(digest[i : i + 2] for i in (0, 2, 4))


def domain_uuid(spec: Spec) -> str:
    """Stable per VM name: defining an updated libvirt export replaces the domain instead of clashing with it."""
    import uuid  # only export needs it

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmrun:{spec.name}"))


def pci_address(address: str) -> str | None:
    """Canonical "0000:01:00.0", or None when it is no PCI address."""
    match = _PCI_ADDRESS.fullmatch(address)
    if not match:
        return None
    domain, bus, slot, function = match.groups()
    return f"{domain or '0000'}:{bus}:{slot}.{function}".lower()
