"""Semantic checks: a well-typed spec can still be wrong. Every problem is collected, none stops the rest."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from vmrun.errors import Problem, SpecError
from vmrun.spec import kubenames
from vmrun.spec.extra_args import refused_extra_args
from vmrun.spec.images import check_image_bases
from vmrun.spec.load import read_document, spec_base, structure_spec
from vmrun.spec.model import ROOT_USER, Accel, Aio, Cache, Disk, DiskFormat, Firmware, Machine, Spec
from vmrun.spec.naming import DEVICE_ID, IFNAMSIZ, pci_address
from vmrun.spec.usernet import check_user_nics, is_user
from vmrun.spec.vmname import VM_NAME_RULE, is_vm_name
from vmrun.units import GIB, MIB, TIB, format_duration, format_size

MAX_QUEUE_PAIRS = 256  # the Linux tap driver's limit (QEMU allows 511)
MAX_SCSI_TARGETS = 256
MAX_MOUNT_TAG_BYTES = 31
MAX_NODE_NAME = 31  # qemu's block node names live in a char[32] (block_int-common.h)
MIN_MEMORY = 16 * MIB
# KVM's -cpu host gets the host's physical address bits (46 on common servers: 64 TiB, holes included);
# 16 TiB is what vmrun promises qemu takes there.
MAX_MEMORY = 16 * TIB
# TCG's CPUs have 40 physical address bits (1 TiB) that also hold the PCI holes: qemu 7.2 refuses more
# than 978G on q35 ("phys-bits too low (40)"), measured here; 960G leaves a margin for pc.
MAX_TCG_MEMORY = 960 * GIB
MAX_DISK_SIZE = 1024 * TIB  # qcow2 with 64 KiB clusters addresses at most 2 PiB; raw files stop sooner
MAX_DURATION = 24 * 3600.0
MAX_HOST_CPUS = 8192  # Linux's largest NR_CPUS
MAX_NUMA_NODES = 1024  # Linux's largest MAX_NUMNODES
# vCPUs qemu accepts per machine type (its error: "The max CPUs supported by machine ... is N").
# pc-q35-X.Y by version: up to 2.7 255, from 2.8 288, from 8.0 1024, from 9.0 4096 (QEMU's commits and
# qemu-devel, 2024). The bare alias q35 means the newest q35 of the installed qemu, which vmrun cannot know
# without running it: it gets 288, qemu 7.2's (Debian 12). pc (i440fx) is 255 in every version.
Q35_MAX_CPUS = ((9, 0, 4096), (8, 0, 1024), (2, 8, 288), (0, 0, 255))
MAX_CPUS = {"q35": 288, "pc": 255}
DEFAULT_MAX_CPUS = 255  # a machine type vmrun has no figure for: the xAPIC limit every x86 machine has
# Above 255 vCPUs qemu 7.2 needs x2APIC with KVM's in-kernel irqchip, which TCG lacks.
MAX_TCG_CPUS = 255

_MACHINE_TYPE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_Q35_VERSIONED = re.compile(r"pc-q35-(\d+)\.(\d+)")
_CPU_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Ids vmrun gives its own devices and chardevs; a user device may not take them.
RESERVED_IDS = frozenset({"scsi0", "vser0", "qga0", "qga0-port", "qmp", "serial0", "cidata"})
# qemu names the -drive if=pflash backends pflash0 and pflash1; a block node may not take their names.
_FIRMWARE_DRIVES = ("pflash0", "pflash1")
# Values QEMU treats as a request for help instead of a value.
_QEMU_HELP_WORDS = frozenset({"help", "?"})

Check = Callable[[Spec], Iterable[Problem]]


def check_name(spec: Spec) -> Iterator[Problem]:
    if not is_vm_name(spec.name):
        yield Problem("name", f"{spec.name!r} is not a valid VM name", VM_NAME_RULE)


def max_cpus(machine_type: str) -> int:
    versioned = _Q35_VERSIONED.fullmatch(machine_type)
    if versioned:
        version = (int(versioned[1]), int(versioned[2]))
        return next(limit for major, minor, limit in Q35_MAX_CPUS if version >= (major, minor))
    if machine_type.startswith("pc-i440fx-"):
        return MAX_CPUS["pc"]
    return MAX_CPUS.get(machine_type, DEFAULT_MAX_CPUS)


def _tcg_cpus_problem(machine: Machine) -> Problem | None:
    if machine.cpus <= MAX_TCG_CPUS:
        return None
    return Problem("machine.cpus", f"{machine.cpus} vCPUs exceed the {MAX_TCG_CPUS} qemu runs under TCG",
                   "more need KVM's in-kernel irqchip")


def _tcg_memory_problem(machine: Machine) -> Problem | None:
    if machine.memory <= MAX_TCG_MEMORY:
        return None
    return Problem("machine.memory", f"{format_size(machine.memory)} exceeds the {format_size(MAX_TCG_MEMORY)} "
                   "qemu gives a TCG guest (40 physical address bits)", "more needs KVM")


def tcg_limits(machine: Machine) -> list[Problem]:
    """What qemu refuses under TCG though KVM takes it: validate checks it for accel = "tcg", preflight
    for accel = "auto" on a host that gets TCG."""
    return [problem for problem in (_tcg_cpus_problem(machine), _tcg_memory_problem(machine)) if problem]


def _cpus_problem(machine: Machine) -> Problem | None:
    limit = max_cpus(machine.type)
    if machine.cpus < 1:
        return Problem("machine.cpus", f"must be at least 1, got {machine.cpus}")
    if machine.cpus > limit:
        return Problem("machine.cpus", f"{machine.cpus} vCPUs exceed the {limit} qemu supports on machine "
                       f"{machine.type}")
    return _tcg_cpus_problem(machine) if machine.accel is Accel.TCG else None


def _memory_problem(machine: Machine) -> Problem | None:
    if machine.memory < MIN_MEMORY:
        return Problem("machine.memory", f"must be at least 16M, got {machine.memory} bytes")
    if machine.memory > MAX_MEMORY:
        return Problem("machine.memory", f"must be at most {format_size(MAX_MEMORY)}, "
                       f"got {format_size(machine.memory)}")
    if machine.memory % MIB:
        return Problem("machine.memory", "must be a whole number of MiB")
    return _tcg_memory_problem(machine) if machine.accel is Accel.TCG else None


def check_machine(spec: Spec) -> Iterator[Problem]:
    machine = spec.machine
    if not _MACHINE_TYPE.fullmatch(machine.type) or machine.type in _QEMU_HELP_WORDS:
        yield Problem("machine.type", f"{machine.type!r} is not a machine type name", "e.g. q35 or pc-q35-7.2")
    yield from (problem for problem in (_cpus_problem(machine), _memory_problem(machine)) if problem)
    cpu_model = machine.cpu_model
    if cpu_model is not None:
        if not _CPU_MODEL.fullmatch(cpu_model) or cpu_model in _QEMU_HELP_WORDS:
            yield Problem(
                "machine.cpu_model", f"{cpu_model!r} is not a CPU model name",
                "CPU feature flags go in qemu.extra_args",
            )
        elif cpu_model == "host" and machine.accel is Accel.TCG:
            yield Problem("machine.cpu_model", '"host" needs KVM, but machine.accel is "tcg"', 'use "max"')


def _cpu_list_problems(cpus: tuple[int, ...], path: str) -> Iterator[Problem]:
    for index, cpu in enumerate(cpus):
        if not 0 <= cpu < MAX_HOST_CPUS:
            yield Problem(f"{path}[{index}]", f"{cpu} is not a host CPU number", f"0 to {MAX_HOST_CPUS - 1}")


def check_tuning(spec: Spec) -> Iterator[Problem]:
    machine = spec.machine
    page = machine.hugepages
    if page is not None and machine.memory % page.bytes:
        yield Problem("machine.hugepages", f"machine.memory ({format_size(machine.memory)}) is not a whole number "
                      f"of {page} pages", f"make memory a multiple of {page}")
    if machine.vcpu_pin is not None:
        if len(machine.vcpu_pin) != machine.cpus:
            yield Problem("machine.vcpu_pin", f"has {len(machine.vcpu_pin)} host CPUs for {machine.cpus} vCPUs "
                          "(machine.cpus)", "one host CPU per vCPU, in vCPU order")
        # Two vCPUs may share a host CPU on purpose (overcommitted but still kept off the others).
        yield from _cpu_list_problems(machine.vcpu_pin, "machine.vcpu_pin")
    if machine.emulator_pin is not None:
        if not machine.emulator_pin:
            yield Problem("machine.emulator_pin", "is empty: qemu's threads would have no CPU to run on",
                          "name at least one host CPU, or leave emulator_pin out")
        # A set of CPUs: the same CPU twice means a typo for another one.
        for cpu in sorted({cpu for cpu in machine.emulator_pin if machine.emulator_pin.count(cpu) > 1}):
            yield Problem("machine.emulator_pin", f"names host CPU {cpu} twice")
        yield from _cpu_list_problems(machine.emulator_pin, "machine.emulator_pin")
    if machine.io_thread and not spec.disks and spec.cloud_init is None:
        yield Problem("machine.io_thread", "there is no disk: the virtio-scsi controller it is for does not exist")
    if machine.numa_node is not None and not 0 <= machine.numa_node < MAX_NUMA_NODES:
        yield Problem("machine.numa_node", f"{machine.numa_node} is not a NUMA node number",
                      f"0 to {MAX_NUMA_NODES - 1}")


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
        if not DEVICE_ID.fullmatch(device_id):
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


def check_boot_disk(spec: Spec) -> Iterator[Problem]:
    if spec.boot.disk is not None and spec.boot.disk not in {disk.id for disk in spec.disks}:
        yield Problem("boot.disk", f"no disk has id {spec.boot.disk!r}")


def check_disks(spec: Spec) -> Iterator[Problem]:
    seed = spec.cloud_init is not None
    if len(spec.disks) + seed > MAX_SCSI_TARGETS:
        also = " (one of them the cloud-init seed)" if seed else ""
        yield Problem("disks", f"at most {MAX_SCSI_TARGETS} disks fit on the virtio-scsi controller{also}")
    for index, disk in enumerate(spec.disks):
        path = f"disks[{index}]"
        yield from _check_overlay(disk, path)
        if disk.passthrough and disk.format is not DiskFormat.RAW:
            yield Problem(f"{path}.format", "a passthrough disk is a host block device: format must be raw")
        if disk.passthrough and disk.size is not None:
            yield Problem(f"{path}.size", "vmrun does not create passthrough disks (they are host block devices)")
        if disk.aio is Aio.NATIVE and disk.cache not in (Cache.NONE, Cache.DIRECTSYNC):
            yield Problem(f"{path}.aio", 'aio = "native" needs cache = "none" or "directsync" (O_DIRECT)')
        if disk.size is not None:
            yield from _size_problems(disk.size, f"{path}.size")
    yield from _shared_images(spec)
    paths = {str(disk.path): f"disks[{index}].path" for index, disk in enumerate(spec.disks) if not disk.readonly}
    for index, disk in enumerate(spec.disks):
        if disk.base is not None and str(disk.base) in paths:
            yield Problem(f"disks[{index}].base", f"{disk.base} is also written as {paths[str(disk.base)]}",
                          "a base image must never be written")


def _shared_images(spec: Spec) -> Iterator[Problem]:
    """qemu locks an image it writes: no other disk may open it, read-only or not."""
    first_use: dict[str, str] = {}
    writable_use: dict[str, str] = {}
    for index, disk in enumerate(spec.disks):
        image, here = str(disk.path), f"disks[{index}].path"
        if not disk.readonly and image in first_use:
            yield Problem(here, f"writable disk image {image!r} is already used by {first_use[image]}")
        elif disk.readonly and image in writable_use:
            yield Problem(here, f"disk image {image!r} is already used writable by {writable_use[image]}",
                          "qemu locks an image it writes: make both read-only")
        first_use.setdefault(image, here)
        if not disk.readonly:
            writable_use.setdefault(image, here)


def _size_problems(size: int, path: str) -> Iterator[Problem]:
    if size <= 0:
        yield Problem(path, "must be larger than 0")
    elif size > MAX_DISK_SIZE:
        yield Problem(path, f"must be at most {format_size(MAX_DISK_SIZE)}, got {format_size(size)}")
    elif size % 512:
        yield Problem(path, "must be a multiple of 512 bytes")


def node_names(disk: Disk) -> tuple[str, ...]:
    """The block node names render gives a disk: the format node is the id, a file node under it "<id>-file"."""
    return (disk.id,) if disk.passthrough else (f"{disk.id}-file", disk.id)


def check_node_names(spec: Spec) -> Iterator[Problem]:
    """qemu's block node names are at most 31 characters, and one namespace holds them and the firmware's drives.

    Ids that are not valid ids are check_ids' to report.
    """
    # Reserved under BIOS too: a spec that switches to UEFI should not start failing in qemu.
    taken: dict[str, str] = dict.fromkeys(_FIRMWARE_DRIVES, "the UEFI firmware's drives")
    for index, disk in enumerate(spec.disks):
        if not DEVICE_ID.fullmatch(disk.id):
            continue
        path, names = f"disks[{index}].id", node_names(disk)
        longest = max(names, key=len)
        clash = next((name for name in names if name in taken), None)
        if len(longest) > MAX_NODE_NAME:
            room = MAX_NODE_NAME - (len(longest) - len(disk.id))
            yield Problem(path, f"block node name {longest!r} is longer than qemu's {MAX_NODE_NAME} characters",
                          f"use a disk id of at most {room} characters")
        elif clash is not None:
            yield Problem(path, f"block node name {clash!r} is already used by {taken[clash]}", "rename this disk")
        taken.update(dict.fromkeys(names, f"{path} ({disk.id!r})"))
def _check_overlay(disk: Disk, path: str) -> Iterator[Problem]:
    if disk.base is None:
        if disk.ephemeral:
            yield Problem(f"{path}.ephemeral", "only applies to an overlay", "set base, the image it overlays")
        return
    if disk.passthrough:
        yield Problem(f"{path}.base", "a passthrough disk is a host block device and cannot overlay a base")
    elif disk.format is not DiskFormat.QCOW2:
        yield Problem(f"{path}.format", f'an overlay on base is a qcow2 image: format must be "qcow2", not '
                                        f'"{disk.format}"')




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


def check_queue_count(spec: Spec) -> Iterator[Problem]:
    for index, nic in enumerate(spec.nics):
        if nic.queues < 1:
            yield Problem(f"nics[{index}].queues", f"must be at least 1, got {nic.queues}")


def check_queue_limit(spec: Spec) -> Iterator[Problem]:
    cpus = spec.machine.cpus
    limit = f"machine.cpus ({cpus})" if cpus <= MAX_QUEUE_PAIRS else f"the tap driver's limit ({MAX_QUEUE_PAIRS})"
    for index, nic in enumerate(spec.nics):
        if cpus >= 1 and nic.queues > min(cpus, MAX_QUEUE_PAIRS) and not is_user(nic):  # check_user_nics says
            yield Problem(
                f"nics[{index}].queues", f"{nic.queues} queue pairs exceed {limit}",
                "more queue pairs than vCPUs bring nothing",
            )


def check_derived_names(spec: Spec) -> Iterator[Problem]:
    """Taps and MACs left out of the spec are derived from the VM's name: each must still be unique."""
    yield from _duplicates(((f"nics[{i}].tap", n.tap) for i, n in enumerate(spec.nics) if n.tap and not is_user(n)),
                           "tap")
    yield from _duplicates(((f"nics[{i}].mac", n.mac) for i, n in enumerate(spec.nics) if n.mac), "MAC")


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


def _kubevirt_keys(spec: Spec) -> Iterator[Problem]:
    """Each [kubevirt.<kind>.<id>] names a device of that kind."""
    kubevirt = spec.kubevirt
    for kind, what, tables, devices in (
        ("disks", "disk", kubevirt.disks, spec.disks), ("nics", "NIC", kubevirt.nics, spec.nics),
        ("vfio", "VFIO device", kubevirt.vfio, spec.vfio), ("shares", "share", kubevirt.shares, spec.shares),
    ):
        ids = [device.id for device in devices]
        for device_id in sorted(tables.keys() - set(ids)):
            yield Problem(f"kubevirt.{kind}.{device_id}", f"no {what} has id {device_id!r}",
                          f"ids in {kind}: {', '.join(ids)}" if ids else f"the spec has no {kind}")


def check_kubevirt(spec: Spec) -> Iterator[Problem]:
    kubevirt = spec.kubevirt
    yield from _kubevirt_keys(spec)
    if kubevirt.namespace is not None and not kubenames.is_dns_label(kubevirt.namespace):
        yield Problem("kubevirt.namespace", f"{kubevirt.namespace!r} is not a namespace", kubenames.LABEL_RULE)
    if kubevirt.kernel_image is not None and not kubenames.is_image_reference(kubevirt.kernel_image):
        yield Problem("kubevirt.kernel_image", f"{kubevirt.kernel_image!r} is not an image reference")
    for disk_id, disk in kubevirt.disks.items():
        path = f"kubevirt.disks.{disk_id}"
        sources = [key for key in ("pvc", "container_disk", "url") if getattr(disk, key) is not None]
        if len(sources) != 1:
            yield Problem(path, f"has {' and '.join(sources) or 'no source'}",
                          "give exactly one of pvc, container_disk, url")
        if disk.pvc is not None and not kubenames.is_dns_subdomain(disk.pvc):
            yield Problem(f"{path}.pvc", f"{disk.pvc!r} is not a PVC name", kubenames.SUBDOMAIN_RULE)
        if disk.container_disk is not None and not kubenames.is_image_reference(disk.container_disk):
            yield Problem(f"{path}.container_disk", f"{disk.container_disk!r} is not an image reference")
        if disk.url is not None and not disk.url.startswith(("http://", "https://")):
            yield Problem(f"{path}.url", f"{disk.url!r} is not an http(s) URL", "CDI imports over http and https")
    for nic_id, nic in kubevirt.nics.items():
        if nic.network is not None and not kubenames.is_network_name(nic.network):
            yield Problem(f"kubevirt.nics.{nic_id}.network", f"{nic.network!r} is not a network attachment name",
                          'write "name" or "namespace/name"')
    for vfio_id, vfio in kubevirt.vfio.items():
        if not kubenames.is_resource_name(vfio.device_name):
            yield Problem(f"kubevirt.vfio.{vfio_id}.device_name", f"{vfio.device_name!r} is not a resource name",
                          'as permittedHostDevices names it, e.g. "nvidia.com/GA102GL_A10"')
    for share_id, share in kubevirt.shares.items():
        if not kubenames.is_dns_subdomain(share.pvc):
            yield Problem(f"kubevirt.shares.{share_id}.pvc", f"{share.pvc!r} is not a PVC name",
                          kubenames.SUBDOMAIN_RULE)
    if kubevirt.live_migrate:
        for index, device in enumerate(spec.vfio):
            yield Problem("kubevirt.live_migrate", f"vfio[{index}] ({device.id}) cannot move while the VM runs",
                          "KubeVirt refuses to migrate a VM with host devices; set live_migrate = false")


def check_secure_boot(spec: Spec) -> Iterator[Problem]:
    # Only UEFI has Secure Boot: exported as BIOS, the guest would boot unverified while the spec says otherwise.
    if spec.kubevirt.secure_boot and spec.boot.firmware is not Firmware.UEFI:
        yield Problem("kubevirt.secure_boot", f"Secure Boot needs UEFI firmware, and boot.firmware is "
                      f"{spec.boot.firmware}", 'set boot.firmware = "uefi", or remove secure_boot')


def _duration_problems(seconds: float, path: str) -> Iterator[Problem]:
    if seconds <= 0:
        yield Problem(path, "must be longer than 0s")
    elif seconds > MAX_DURATION:
        yield Problem(path, f"must be at most {format_duration(MAX_DURATION)}, got {format_duration(seconds)}")


def check_agent_and_hooks(spec: Spec) -> Iterator[Problem]:
    yield from _duration_problems(spec.agent.timeout, "agent.timeout")
    if spec.post_boot and not spec.agent.enabled:
        yield Problem("post_boot", "post_boot hooks run over the guest agent", "set agent.enabled = true")
    for index, hook in enumerate(spec.post_boot):
        if not hook.run:
            yield Problem(f"post_boot[{index}].run", "is empty", 'e.g. run = ["/bin/sh", "-c", "..."]')
        yield from _duration_problems(hook.timeout, f"post_boot[{index}].timeout")


def check_cloud_init(spec: Spec) -> Iterator[Problem]:
    if spec.cloud_init is None:
        return
    for key, value in spec.cloud_init.meta_data.items():
        if not key:
            yield Problem("cloud_init.meta_data", "has an empty key")
        elif not value:
            yield Problem(f"cloud_init.meta_data.{key}", "is empty")


def check_host_and_qemu(spec: Spec) -> Iterator[Problem]:
    if not _USER.fullmatch(spec.host.user):
        yield Problem("host.user", f"{spec.host.user!r} is not a user name")
    if spec.host.user == ROOT_USER and not spec.host.allow_root:
        yield Problem("host.user", '"root" keeps qemu as root when vmrun runs as root: no privilege drop',
                      'name another user, or set host.allow_root = true to mean it (shares with security_model = '
                      '"passthrough" need it)')
    if spec.host.allow_root and spec.host.user != ROOT_USER:
        yield Problem("host.allow_root", 'only applies with host.user = "root"')
    if not spec.qemu.binary:
        yield Problem("qemu.binary", "must not be empty")
    for index, why, hint in refused_extra_args(spec.qemu.extra_args):
        yield Problem(f"qemu.extra_args[{index}]", why, hint)


# Each check with the sections it cannot do without. A section that failed to structure is left at its
# default, and some defaults would make a check report a mistake the user did not make: an absent boot
# section has nothing to boot, and a placeholder name derives other tap names. Checks that only look at the
# devices that are there run whatever failed.
CHECKS: tuple[tuple[Check, frozenset[str]], ...] = (
    (check_name, frozenset({"name"})),
    (check_machine, frozenset({"machine"})),
    (check_tuning, frozenset({"machine"})),
    (check_ids, frozenset()),
    (check_boot, frozenset({"boot"})),
    (check_boot_disk, frozenset({"boot", "disks"})),
    (check_disks, frozenset()),
    (check_image_bases, frozenset()),
    (check_node_names, frozenset()),
    (check_queue_count, frozenset()),
    (check_queue_limit, frozenset({"machine"})),
    (check_nics, frozenset()),
    (check_user_nics, frozenset()),
    (check_derived_names, frozenset({"name"})),
    (check_shares, frozenset()),
    (check_vfio, frozenset()),
    (check_cloud_init, frozenset()),
    (check_agent_and_hooks, frozenset()),
    (check_host_and_qemu, frozenset()),
    (check_kubevirt, frozenset({"disks", "nics", "vfio", "shares"})),
    (check_secure_boot, frozenset({"boot", "kubevirt"})),
)


def check_spec(spec: Spec, *, failed: frozenset[str] = frozenset()) -> list[Problem]:
    """Every problem the checks find; those that need a section in ``failed`` (it did not structure) skip."""
    return [problem for check, needs in CHECKS if not needs & failed for problem in check(spec)]


def validate(spec: Spec, source: str | Path, *, more: Iterable[Problem] = ()) -> Spec:
    """The spec itself when every check passes, else one SpecError listing every problem (and `more`)."""
    problems = [*check_spec(spec), *more]
    if problems:
        raise SpecError(str(source), problems)
    return spec


# More checks a caller adds, such as the seed files [cloud_init] names (they read files, which this module does not).
MoreChecks = Callable[[Spec], Iterable[Problem]]


def validate_document(
    data: dict[str, Any], *, source: str, base: Path, more: MoreChecks | None = None
) -> Spec:
    """Structure and check TOML data: structural mistakes and the semantic ones of every section that
    structured, all in one SpecError. ``more`` runs only when the whole spec structured."""
    structured = structure_spec(data, base=base)
    problems = [*structured.problems, *check_spec(structured.spec, failed=structured.failed)]
    if more is not None and not structured.failed:
        problems += more(structured.spec)
    if problems:
        raise SpecError(source, problems)
    return structured.spec


def load_valid_spec(path: Path, source: str | None = None, *, more: MoreChecks | None = None) -> Spec:
    return validate_document(read_document(path), source=source or str(path), base=spec_base(path), more=more)
