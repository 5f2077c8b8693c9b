"""Spec + host facts + run paths -> the exact qemu argv. Pure: no I/O, golden-testable.

Every user string that reaches a qemu option value goes through ``qemu_opt``, which
doubles commas; the argv is a list, never a shell string.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from vmrun.host.facts import HostFacts, PrivilegeDrop, choose_accel, drops_privileges, vhost_enabled
from vmrun.spec.model import Accel, Cache, Disk, Firmware, Nic, Share, Spec, Vfio
from vmrun.spec.usernet import forwards, is_user
from vmrun.state.locations import RunPaths
from vmrun.units import MIB

AGENT_PORT_NAME = "org.qemu.guest_agent.0"
SEED_ID = "cidata"  # the cloud-init seed's node and device id, reserved in vmrun.spec.check

MEMORY_ID = "ram0"  # the memory backend object of guest RAM
IOTHREAD_ID = "io0"  # the iothread of the virtio-scsi controller

OptionValue = str | int | bool | Path | None


def _escape(value: str) -> str:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError(f"control character in qemu option value {value!r}")
    return value.replace(",", ",,")


def _format(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return _escape(str(value))


def qemu_opt(first: str | None, props: Mapping[str, OptionValue]) -> str:
    """``driver,key=value,...`` with commas in values doubled; None values are left out.

    ``first`` is vmrun's own word (a driver or backend type), never user data.
    """
    parts = [first] if first else []
    parts += [f"{key}={_format(value)}" for key, value in props.items() if value is not None]
    return ",".join(parts)


def _machine(spec: Spec, facts: HostFacts) -> list[str]:
    machine = spec.machine
    accel = choose_accel(spec, facts).accel
    cpu_model = machine.cpu_model or ("host" if accel is Accel.KVM else "max")
    backend = _memory_backend(spec)
    return [
        # Named threads ("CPU 0/TCG") let drift tell a pinned VM's vCPU threads from the rest without QMP.
        "-name", qemu_opt(None, {"guest": spec.name, "process": f"vmrun-{spec.name}",
                                 "debug-threads": True if machine.pinned else None}),
        "-nodefaults", "-no-user-config",
        "-machine", qemu_opt(None, {"type": machine.type, "memory-backend": MEMORY_ID if backend else None}),
        *backend,
        "-accel", str(accel),
        "-cpu", cpu_model,
        "-smp", str(machine.cpus),
        "-m", str(machine.memory // MIB),
        # Paused until vmrun has pinned every thread (vmrun.qemu.pinning): no vCPU runs unpinned.
        *(["-S"] if machine.pinned else []),
    ]


def _memory_backend(spec: Spec) -> list[str]:
    """Guest RAM as its own object, when it comes from huge pages or is bound to a host NUMA node."""
    machine = spec.machine
    if machine.hugepages is None and machine.numa_node is None:
        return []
    numa: dict[str, OptionValue] = {"policy": "bind", "host-nodes": machine.numa_node} \
        if machine.numa_node is not None else {}
    size = f"{machine.memory // MIB}M"
    if machine.hugepages is None:
        return ["-object", qemu_opt("memory-backend-ram", {"id": MEMORY_ID, "size": size, **numa})]
    # VFIO pins all guest RAM at start anyway; faulting every page in then (not at first touch) makes a
    # pool that is too small fail qemu's start instead of the guest later.
    return ["-object", qemu_opt("memory-backend-memfd", {
        "id": MEMORY_ID, "size": size, "hugetlb": True, "hugetlbsize": str(machine.hugepages),
        "prealloc": True if spec.vfio else None, **numa,
    })]


def _process(spec: Spec, facts: HostFacts, paths: RunPaths) -> list[str]:
    argv = [
        "-display", "none",
        "-chardev", qemu_opt("socket", {"id": "qmp", "path": paths.qmp_socket, "server": True, "wait": False}),
        "-mon", qemu_opt(None, {"chardev": "qmp", "mode": "control"}),
        "-chardev", qemu_opt("socket", {
            "id": "serial0", "path": paths.console_socket, "server": True, "wait": False,
            "logfile": paths.console_log,
        }),
        "-serial", "chardev:serial0",
        "-pidfile", str(paths.pidfile),
        "-daemonize",
    ]
    if facts.seccomp:
        # elevateprivileges=deny would break the privilege drop, spawn=deny kills qemu at -daemonize.
        argv += ["-sandbox", qemu_opt("on", {"obsolete": "deny", "resourcecontrol": "deny"})]
    if drops_privileges(spec, facts):
        argv += _privilege_drop(spec, facts.privilege_drop)
    return argv


def _privilege_drop(spec: Spec, how: PrivilegeDrop) -> list[str]:
    """QEMU 8.1-9.0 have -run-with without user=, 10.0 has no -runas; a qemu with neither gets nothing
    here, and preflight refuses to start it as root."""
    if how is PrivilegeDrop.RUN_WITH_USER:
        return ["-run-with", qemu_opt(None, {"user": spec.host.user})]
    if how is PrivilegeDrop.RUNAS:
        return ["-runas", spec.host.user]
    return []


def _boot(spec: Spec, facts: HostFacts, paths: RunPaths) -> list[str]:
    boot, argv = spec.boot, []
    if boot.firmware is Firmware.UEFI:
        argv += [
            "-drive", qemu_opt(None, {
                "if": "pflash", "format": "raw", "unit": 0, "readonly": True, "file": facts.ovmf_code,
            }),
            "-drive", qemu_opt(None, {"if": "pflash", "format": "raw", "unit": 1, "file": paths.uefi_vars}),
        ]
    if boot.kernel is not None:
        argv += ["-kernel", str(boot.kernel)]
        if boot.initrd is not None:
            argv += ["-initrd", str(boot.initrd)]
        if boot.append is not None:
            argv += ["-append", boot.append]
    return argv


def _cache_props(cache: Cache) -> dict[str, OptionValue]:
    direct = cache in (Cache.NONE, Cache.DIRECTSYNC)
    return {"cache.direct": direct or None, "cache.no-flush": cache is Cache.UNSAFE or None}


def _disk(spec: Spec, disk: Disk, scsi_id: int) -> list[str]:
    # Cache, discard and read-only go on both nodes, as libvirt does: a -blockdev child inherits nothing.
    common = {
        **_cache_props(disk.cache),
        "discard": "unmap" if disk.discard else None,
        "read-only": disk.readonly or None,
    }
    file_driver = "host_device" if disk.passthrough else "file"
    file_node = disk.id if disk.passthrough else f"{disk.id}-file"
    argv = ["-blockdev", qemu_opt(None, {
        "driver": file_driver, "filename": disk.path, "node-name": file_node, "aio": str(disk.aio), **common,
    })]
    if not disk.passthrough:
        # An overlay's base is not named here: the qcow2 node opens it from the image header, read-only.
        argv += ["-blockdev", qemu_opt(None, {
            "driver": str(disk.format), "file": file_node, "node-name": disk.id, **common,
        })]
    write_through = disk.cache in (Cache.WRITETHROUGH, Cache.DIRECTSYNC)
    argv += ["-device", qemu_opt("scsi-block" if disk.passthrough else "scsi-hd", {
        "bus": "scsi0.0", "channel": 0, "scsi-id": scsi_id, "lun": 0, "drive": disk.id, "id": disk.id,
        "write-cache": False if write_through and not disk.passthrough else None,
        "bootindex": 0 if spec.boot.disk == disk.id else None,
    })]
    return argv


def _cloud_init_seed(paths: RunPaths, scsi_id: int) -> list[str]:
    """The NoCloud seed `up` builds, as a read-only CD-ROM on the same controller, after the disks."""
    return [
        "-blockdev", qemu_opt(None, {
            "driver": "file", "filename": paths.cloud_init_seed, "node-name": SEED_ID, "read-only": True,
        }),
        "-device", qemu_opt("scsi-cd", {
            "bus": "scsi0.0", "channel": 0, "scsi-id": scsi_id, "lun": 0, "drive": SEED_ID, "id": SEED_ID,
        }),
    ]


def _scsi(spec: Spec, paths: RunPaths) -> list[str]:
    if not spec.disks and spec.cloud_init is None:
        return []
    io_thread = spec.machine.io_thread
    argv = ["-object", qemu_opt("iothread", {"id": IOTHREAD_ID})] if io_thread else []
    argv += ["-device", qemu_opt("virtio-scsi-pci", {"id": "scsi0", "iothread": IOTHREAD_ID if io_thread else None})]
    for scsi_id, disk in enumerate(spec.disks):
        argv += _disk(spec, disk, scsi_id)
    if spec.cloud_init is not None:
        argv += _cloud_init_seed(paths, len(spec.disks))
    return argv


def _user_nic(spec: Spec, nic: Nic) -> list[str]:
    hostfwd = [qemu_opt(None, {"hostfwd": forward.hostfwd}) for forward in forwards(nic)]
    return [
        "-netdev", ",".join([qemu_opt("user", {"id": nic.id, "restrict": nic.restrict}), *hostfwd]),
        "-device", qemu_opt("virtio-net-pci", {"netdev": nic.id, "id": nic.id, "mac": nic.guest_mac}),
    ]


def _nic(spec: Spec, nic: Nic, facts: HostFacts) -> list[str]:
    if is_user(nic):
        return _user_nic(spec, nic)
    multiqueue = nic.queues > 1
    return [
        "-netdev", qemu_opt("tap", {
            "id": nic.id, "ifname": nic.host_tap, "script": "no", "downscript": "no",
            "vhost": vhost_enabled(nic, vhost_net=facts.vhost_net), "queues": nic.queues if multiqueue else None,
        }),
        "-device", qemu_opt("virtio-net-pci", {
            "netdev": nic.id, "id": nic.id, "mac": nic.guest_mac,
            # N RX + N TX queues, one config and one control vector.
            "mq": True if multiqueue else None, "vectors": 2 * nic.queues + 2 if multiqueue else None,
        }),
    ]


def _share(share: Share) -> list[str]:
    return [
        "-fsdev", qemu_opt("local", {
            "id": share.id, "path": share.path, "security_model": str(share.security_model),
            "readonly": share.readonly or None,
        }),
        "-device", qemu_opt("virtio-9p-pci", {"fsdev": share.id, "mount_tag": share.tag, "id": share.id}),
    ]


def _vfio(vfio: Vfio) -> list[str]:
    return ["-device", qemu_opt("vfio-pci", {"host": vfio.host, "id": vfio.id})]


def _agent(spec: Spec, paths: RunPaths) -> list[str]:
    if not spec.agent.enabled:
        return []
    return [
        "-chardev", qemu_opt("socket", {"id": "qga0", "path": paths.agent_socket, "server": True, "wait": False}),
        "-device", qemu_opt("virtio-serial-pci", {"id": "vser0"}),
        "-device", qemu_opt("virtserialport", {
            "bus": "vser0.0", "chardev": "qga0", "name": AGENT_PORT_NAME, "id": "qga0-port",
        }),
    ]


def _flatten(parts: Iterable[list[str]]) -> list[str]:
    return [arg for part in parts for arg in part]


def render(spec: Spec, facts: HostFacts, paths: RunPaths) -> list[str]:
    """The full argv, argv[0] being the qemu binary; ``qemu.extra_args`` come last, verbatim."""
    return [
        spec.qemu.binary,
        *_machine(spec, facts),
        *_process(spec, facts, paths),
        *_boot(spec, facts, paths),
        *_scsi(spec, paths),
        *_flatten(_nic(spec, nic, facts) for nic in spec.nics),
        *_flatten(_share(share) for share in spec.shares),
        *_flatten(_vfio(vfio) for vfio in spec.vfio),
        *_agent(spec, paths),
        *spec.qemu.extra_args,
    ]
