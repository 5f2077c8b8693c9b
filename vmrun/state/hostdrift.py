"""Host-side drift: what preflight set up for a running VM that the host no longer has.

Someone deleted a tap, took it off its bridge, gave /dev/vfio/N to another owner, turned KSM off or moved a
pinned qemu thread:
the VM still runs, its argv and spec unchanged, yet it is not what its spec asks for. Each difference
names the NIC or device by its spec path. Reads only, through the host layer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from vmrun.host.facts import qemu_user
from vmrun.host.pci import pci_device
from vmrun.host.system import Host, User, format_cpu_list
from vmrun.host.view import KSM_RUN
from vmrun.spec.model import Spec
from vmrun.spec.usernet import is_user


def host_differences(spec: Spec, host: Host, *, as_root: bool, pid: int | None = None) -> list[str]:
    """Empty when the host still holds what spec's VM was started with. as_root: vmrun runs as root, so
    preflight owned the changes (a tap it could not create or KSM it could not turn on were refused or
    only warned of). pid: the VM's qemu, whose threads' affinities are checked against the pins."""
    return [*_nic_differences(spec, host), *_vfio_differences(spec, host, as_root=as_root),
            *_ksm_differences(spec, host, as_root=as_root),
            *(_pin_differences(spec, host, pid) if pid is not None else ())]


_VCPU_THREAD = re.compile(r"CPU (\d+)/")  # qemu's name for a vCPU thread with -name debug-threads=on


def _pin_differences(spec: Spec, host: Host, pid: int) -> Iterator[str]:
    """Someone moved a pinned qemu thread (taskset): by its name, since drift asks qemu nothing."""
    machine = spec.machine
    if not machine.pinned:
        return
    for tid in host.thread_ids(pid):
        name, cpus = host.thread_name(pid, tid) or "", host.thread_cpus(pid, tid)
        vcpu = _VCPU_THREAD.match(name)
        if vcpu is not None and machine.vcpu_pin is not None and int(vcpu[1]) < len(machine.vcpu_pin):
            index = int(vcpu[1])
            wanted, path, what = frozenset({machine.vcpu_pin[index]}), f"machine.vcpu_pin[{index}]", f"vCPU {index}"
        elif vcpu is None and machine.emulator_pin is not None:
            wanted, path, what = frozenset(machine.emulator_pin), "machine.emulator_pin", f"qemu thread {tid} ({name})"
        else:
            continue
        if cpus is not None and cpus != wanted:
            yield f"{path}: {what} runs on host CPUs {format_cpu_list(cpus)}, not {format_cpu_list(wanted)}"


def _nic_differences(spec: Spec, host: Host) -> Iterator[str]:
    for index, nic in enumerate(spec.nics):
        if is_user(nic):
            continue  # qemu's own network: nothing on the host to lose
        tap, path = nic.host_tap, f"nics[{index}]"
        if not host.exists(f"/sys/class/net/{tap}"):
            yield f"{path}: tap {tap} is gone from the host"
            continue
        if nic.bridge is None:
            continue
        master = host.link_name(f"/sys/class/net/{tap}/master")
        if master is None:
            yield f"{path}.bridge: tap {tap} is no longer attached to bridge {nic.bridge}"
        elif master != nic.bridge:
            yield f"{path}.bridge: tap {tap} is attached to {master}, not to bridge {nic.bridge}"


def _vfio_differences(spec: Spec, host: Host, *, as_root: bool) -> Iterator[str]:
    user = qemu_user(spec, host, as_root=as_root)
    for index, vfio in enumerate(spec.vfio):
        path, device = f"vfio[{index}]", pci_device(host, vfio.host)
        if device is None:
            yield f"{path}: {vfio.host} is gone from the host"
        elif device.driver != "vfio-pci":
            yield f"{path}: {vfio.host} is bound to {device.driver or 'no driver'}, not to vfio-pci"
        elif device.group is not None:
            yield from _group_node_difference(path, f"/dev/vfio/{device.group}", host, user, as_root=as_root)


def _group_node_difference(path: str, node: str, host: Host, user: User | None, *, as_root: bool) -> Iterator[str]:
    if not host.exists(node):
        yield f"{path}: {node} is gone from the host"
    elif as_root:
        owner = host.ownership(node)
        wanted = None if user is None else f"{user.uid}:{user.gid}"
        if owner != wanted:
            yield f"{path}: {node} is owned by {owner}, not by qemu's user ({wanted})"
    elif not host.can_open(node):
        yield f"{path}: {node} is no longer readable and writable by this user"


def _ksm_differences(spec: Spec, host: Host, *, as_root: bool) -> Iterator[str]:
    run = host.read(KSM_RUN)
    # Without KSM in the kernel, or without root to turn it on, the VM started without it (preflight warned).
    if spec.host.ksm and as_root and run is not None and run != "1":
        yield f"host.ksm: KSM is off on the host ({KSM_RUN} = {run})"
