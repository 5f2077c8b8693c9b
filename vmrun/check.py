"""Semantic checks: a well-typed spec can still be wrong. Every problem is collected, none stops the rest."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from vmrun.errors import Problem, SpecError
from vmrun.naming import IFNAMSIZ, VM_NAME_RULE, is_vm_name, mac_address, pci_address, tap_name
from vmrun.spec import Accel, Aio, Cache, DiskFormat, Spec
from vmrun.units import MIB

MAX_QUEUE_PAIRS = 256  # the Linux tap driver's limit (QEMU allows 511)
MAX_SCSI_TARGETS = 256
MAX_MOUNT_TAG_BYTES = 31
MIN_MEMORY = 16 * MIB

_DEVICE_ID = re.compile(r"[a-z][a-z0-9_-]{0,30}")
_MACHINE_TYPE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_CPU_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Ids vmrun gives its own devices and chardevs; a user device may not take them.
RESERVED_IDS = frozenset({"scsi0", "vser0", "qga0", "qga0-port", "qmp", "serial0"})
# Values QEMU treats as a request for help instead of a value.
_QEMU_HELP_WORDS = frozenset({"help", "?"})

Check = Callable[[Spec], Iterable[Problem]]


def check_name(spec: Spec) -> Iterator[Problem]:
    if not is_vm_name(spec.name):
        yield Problem("name", f"{spec.name!r} is not a valid VM name", VM_NAME_RULE)


def check_machine(spec: Spec) -> Iterator[Problem]:
    machine = spec.machine
    if not _MACHINE_TYPE.fullmatch(machine.type) or machine.type in _QEMU_HELP_WORDS:
        yield Problem("machine.type", f"{machine.type!r} is not a machine type name", "e.g. q35 or pc-q35-7.2")
    if machine.cpus < 1:
        yield Problem("machine.cpus", f"must be at least 1, got {machine.cpus}")
    if machine.memory < MIN_MEMORY:
        yield Problem("machine.memory", f"must be at least 16M, got {machine.memory} bytes")
    elif machine.memory % MIB:
        yield Problem("machine.memory", "must be a whole number of MiB")
    cpu_model = machine.cpu_model
    if cpu_model is not None:
        if not _CPU_MODEL.fullmatch(cpu_model) or cpu_model in _QEMU_HELP_WORDS:
            yield Problem(
                "machine.cpu_model", f"{cpu_model!r} is not a CPU model name",
                "CPU feature flags go in qemu.extra_args",
            )
        elif cpu_model == "host" and machine.accel is Accel.TCG:
            yield Problem("machine.cpu_model", '"host" needs KVM, but machine.accel is "tcg"', 'use "max"')


def _locations(spec: Spec) -> Iterator[tuple[str, str]]:
    """(path of the id, id) for every device, in spec order."""
    for kind in ("disks", "nics", "shares", "vfio"):
        for index, device in enumerate(getattr(spec, kind)):
            yield f"{kind}[{index}]", device.id


def _duplicates(items: Iterable[tuple[str, str]], what: str) -> Iterator[Problem]:
    """One problem for each value seen before, pointing at where it was first."""
    first_seen: dict[str, str] = {}
    for path, value in items:
        if value in first_seen:
            yield Problem(path, f"{what} {value!r} is already used by {first_seen[value]}")
        else:
            first_seen[value] = path


def check_ids(spec: Spec) -> Iterator[Problem]:
    locations = list(_locations(spec))
    for path, device_id in locations:
        if not _DEVICE_ID.fullmatch(device_id):
            yield Problem(f"{path}.id", f"{device_id!r} is not a valid id", "use a-z, then up to 30 of a-z 0-9 _ -")
        elif device_id in RESERVED_IDS:
            yield Problem(f"{path}.id", f"{device_id!r} is reserved for vmrun's own devices", "choose another id")
    yield from _duplicates(((f"{path}.id", device_id) for path, device_id in locations), "id")


def check_boot(spec: Spec) -> Iterator[Problem]:
    boot = spec.boot
    if boot.kernel is None and boot.disk is None:
        yield Problem("boot", "nothing to boot", "set boot.kernel (direct kernel boot) or boot.disk (a disk id)")
    if boot.kernel is not None and boot.disk is not None:
        yield Problem("boot", "boot.kernel and boot.disk exclude each other", "keep one of them")
    if boot.kernel is None:
        for key in ("initrd", "append"):
            if getattr(boot, key) is not None:
                yield Problem(f"boot.{key}", "only applies with boot.kernel")
    if boot.disk is not None and boot.disk not in {disk.id for disk in spec.disks}:
        yield Problem("boot.disk", f"no disk has id {boot.disk!r}")


def check_disks(spec: Spec) -> Iterator[Problem]:
    if len(spec.disks) > MAX_SCSI_TARGETS:
        yield Problem("disks", f"at most {MAX_SCSI_TARGETS} disks fit on the virtio-scsi controller")
    for index, disk in enumerate(spec.disks):
        path = f"disks[{index}]"
        if disk.passthrough and disk.format is not DiskFormat.RAW:
            yield Problem(f"{path}.format", "a passthrough disk is a host block device: format must be raw")
        if disk.passthrough and disk.size is not None:
            yield Problem(f"{path}.size", "vmrun does not create passthrough disks (they are host block devices)")
        if disk.aio is Aio.NATIVE and disk.cache not in (Cache.NONE, Cache.DIRECTSYNC):
            yield Problem(f"{path}.aio", 'aio = "native" needs cache = "none" or "directsync" (O_DIRECT)')
        if disk.size is not None and disk.size % 512:
            yield Problem(f"{path}.size", "must be a multiple of 512 bytes")
    writable = ((f"disks[{i}].path", str(d.path)) for i, d in enumerate(spec.disks) if not d.readonly)
    yield from _duplicates(writable, "writable disk image")


def _interface_name_problem(name: str) -> str | None:
    # The kernel's dev_valid_name(): non-empty, < IFNAMSIZ, no '/', ':' or white space, not "." or "..".
    if not name or name in (".", "..") or name in _QEMU_HELP_WORDS:
        return f"{name!r} is not a valid interface name"
    if len(name.encode()) > IFNAMSIZ:
        return f"{name!r} is longer than {IFNAMSIZ} bytes"
    if any(char in "/:" or char.isspace() for char in name):
        return f"{name!r} may not contain '/', ':' or white space"
    return None


def check_nics(spec: Spec) -> Iterator[Problem]:
    for index, nic in enumerate(spec.nics):
        path = f"nics[{index}]"
        if nic.queues < 1:
            yield Problem(f"{path}.queues", f"must be at least 1, got {nic.queues}")
        elif spec.machine.cpus >= 1 and nic.queues > min(spec.machine.cpus, MAX_QUEUE_PAIRS):
            limit = (
                f"machine.cpus ({spec.machine.cpus})" if spec.machine.cpus <= MAX_QUEUE_PAIRS
                else f"the tap driver's limit ({MAX_QUEUE_PAIRS})"
            )
            yield Problem(
                f"{path}.queues", f"{nic.queues} queue pairs exceed {limit}",
                "more queue pairs than vCPUs bring nothing",
            )
        for key in ("tap", "bridge"):
            name = getattr(nic, key)
            problem = None if name is None else _interface_name_problem(name)
            if problem:
                yield Problem(f"{path}.{key}", problem)
        if nic.mac is not None:
            if not _MAC.fullmatch(nic.mac):
                yield Problem(f"{path}.mac", f"{nic.mac!r} is not a MAC address", "write it as 52:54:00:12:34:56")
            elif int(nic.mac[:2], 16) & 1:
                yield Problem(f"{path}.mac", f"{nic.mac} is a multicast address", "the first octet must be even")
            elif int(nic.mac.replace(":", ""), 16) == 0:
                yield Problem(f"{path}.mac", "00:00:00:00:00:00 is not a usable address")
    yield from _duplicates(((f"nics[{i}].tap", tap_name(spec, n)) for i, n in enumerate(spec.nics)), "tap")
    yield from _duplicates(((f"nics[{i}].mac", mac_address(spec, n)) for i, n in enumerate(spec.nics)), "MAC")


def check_shares(spec: Spec) -> Iterator[Problem]:
    for index, share in enumerate(spec.shares):
        path = f"shares[{index}].tag"
        if not share.tag or share.tag in _QEMU_HELP_WORDS:
            yield Problem(path, f"{share.tag!r} is not a usable mount tag")
        elif len(share.tag.encode()) > MAX_MOUNT_TAG_BYTES:
            yield Problem(path, f"{share.tag!r} is longer than {MAX_MOUNT_TAG_BYTES} bytes")
    yield from _duplicates(((f"shares[{i}].tag", s.tag) for i, s in enumerate(spec.shares)), "mount tag")


def check_vfio(spec: Spec) -> Iterator[Problem]:
    addresses = []
    for index, vfio in enumerate(spec.vfio):
        address = pci_address(vfio.host)
        if address is None:
            yield Problem(f"vfio[{index}].host", f"{vfio.host!r} is not a PCI address", "write it as 0000:01:00.0")
        else:
            addresses.append((f"vfio[{index}].host", address))
    yield from _duplicates(addresses, "PCI device")


def check_agent_and_hooks(spec: Spec) -> Iterator[Problem]:
    if spec.agent.timeout <= 0:
        yield Problem("agent.timeout", "must be longer than 0s")
    if spec.post_boot and not spec.agent.enabled:
        yield Problem("post_boot", "post_boot hooks run over the guest agent", "set agent.enabled = true")
    for index, hook in enumerate(spec.post_boot):
        if not hook.run:
            yield Problem(f"post_boot[{index}].run", "is empty", 'e.g. run = ["/bin/sh", "-c", "..."]')
        if hook.timeout <= 0:
            yield Problem(f"post_boot[{index}].timeout", "must be longer than 0s")


def check_host_and_qemu(spec: Spec) -> Iterator[Problem]:
    if not _USER.fullmatch(spec.host.user):
        yield Problem("host.user", f"{spec.host.user!r} is not a user name")
    if not spec.qemu.binary:
        yield Problem("qemu.binary", "must not be empty")


CHECKS: tuple[Check, ...] = (
    check_name,
    check_machine,
    check_ids,
    check_boot,
    check_disks,
    check_nics,
    check_shares,
    check_vfio,
    check_agent_and_hooks,
    check_host_and_qemu,
)


def check_spec(spec: Spec) -> list[Problem]:
    return [problem for check in CHECKS for problem in check(spec)]


def validate(spec: Spec, source: str | Path) -> Spec:
    """The spec itself when every check passes, else one SpecError listing every problem."""
    problems = check_spec(spec)
    if problems:
        raise SpecError(str(source), problems)
    return spec
