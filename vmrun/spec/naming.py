"""Names vmrun derives when a spec leaves them out: stable, so a VM keeps them across runs."""

from __future__ import annotations

import re

from vmrun.spec.model import Nic, Spec

IFNAMSIZ = 15  # bytes of an interface name, without the kernel's trailing NUL
# The one rule for VM names, from a spec or the command line, before a name becomes a path or a tap.
VM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
VM_NAME_RULE = "use 1-63 of a-z, 0-9 and '-'"
# Neither VM names nor device ids contain a dot, so "<vm>.<nic>" splits one way only: two VMs cannot derive
# the same readable tap. Hashed names ("vm" + hex) have no dot, so they cannot meet a readable one.
TAP_SEPARATOR = "."
_PCI_ADDRESS = re.compile(r"(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")


def _digest(*parts: str) -> str:
    import hashlib  # OpenSSL costs ~3 ms to load; most specs name their taps and MACs

    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def is_vm_name(name: str) -> bool:
    return VM_NAME.fullmatch(name) is not None


def tap_name(spec: Spec, nic: Nic) -> str:
    """The host tap: as given, else "<vm>.<nic>", else "vm" + a hash of both that fits IFNAMSIZ."""
    if nic.tap is not None:
        return nic.tap
    readable = f"{spec.name}{TAP_SEPARATOR}{nic.id}"
    if len(readable.encode()) <= IFNAMSIZ:
        return readable
    return "vm" + _digest(spec.name, nic.id)[: IFNAMSIZ - 2]


def mac_address(spec: Spec, nic: Nic) -> str:
    """As given (lower-cased), else 52:54:00 (QEMU's locally administered prefix) + a stable hash."""
    if nic.mac is not None:
        return nic.mac.lower()
    digest = _digest(spec.name, nic.id)
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
