"""The same VM as a libvirt domain XML. Pure: text in, text out."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from vmrun.export import Export
from vmrun.host.facts import vhost_enabled
from vmrun.qemu.render import AGENT_PORT_NAME, SEED_ID
from vmrun.spec.model import Accel, Disk, Nic, SecurityModel, Share, Spec, Vfio
from vmrun.spec.naming import domain_uuid
from vmrun.spec.usernet import forwards, is_user
from vmrun.units import KIB

QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
# vmrun's 9p security models as libvirt's filesystem accessmode.
_ACCESS_MODES = {
    SecurityModel.PASSTHROUGH: "passthrough",
    SecurityModel.MAPPED_XATTR: "mapped",
    SecurityModel.NONE: "squash",
}


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def _os(domain: ET.Element, spec: Spec) -> None:
    os_element = _sub(domain, "os", **({"firmware": "efi"} if spec.boot.firmware == "uefi" else {}))
    _sub(os_element, "type", "hvm", arch="x86_64", machine=spec.machine.type)
    for key in ("kernel", "initrd"):
        value = getattr(spec.boot, key)
        if value is not None:
            _sub(os_element, key, str(value))
    if spec.boot.append is not None:
        _sub(os_element, "cmdline", spec.boot.append)


def _memory_backing(domain: ET.Element, spec: Spec) -> None:
    if spec.host.ksm and spec.machine.hugepages is None:
        return
    backing = _sub(domain, "memoryBacking")
    if spec.machine.hugepages is not None:
        _sub(_sub(backing, "hugepages"), "page", size=str(spec.machine.hugepages.bytes // KIB), unit="KiB")
    if not spec.host.ksm:
        _sub(backing, "nosharepages")


def _tuning(domain: ET.Element, spec: Spec) -> None:
    """libvirt's iothread ids count from 1; vmrun's iothread runs with the emulator's threads, as in `up`."""
    machine = spec.machine
    if machine.io_thread:
        _sub(domain, "iothreads", "1")
    if machine.pinned:
        cputune = _sub(domain, "cputune")
        for vcpu, cpu in enumerate(machine.vcpu_pin or ()):
            _sub(cputune, "vcpupin", vcpu=str(vcpu), cpuset=str(cpu))
        if machine.emulator_pin is not None:
            cpuset = ",".join(map(str, machine.emulator_pin))
            _sub(cputune, "emulatorpin", cpuset=cpuset)
            if machine.io_thread:
                _sub(cputune, "iothreadpin", iothread="1", cpuset=cpuset)
    if machine.numa_node is not None:
        _sub(_sub(domain, "numatune"), "memory", mode="strict", nodeset=str(machine.numa_node))


def _cpu(domain: ET.Element, spec: Spec, accel: Accel) -> None:
    model = spec.machine.cpu_model
    if model in (None, "host") and accel is Accel.KVM:
        _sub(domain, "cpu", mode="host-passthrough")
    elif model in (None, "max"):
        _sub(domain, "cpu", mode="maximum")
    else:
        cpu = _sub(domain, "cpu", mode="custom", match="exact")
        _sub(cpu, "model", model)


def _disk(devices: ET.Element, spec: Spec, disk: Disk, unit: int) -> None:
    element = _sub(devices, "disk", type="block" if disk.passthrough else "file",
                   device="lun" if disk.passthrough else "disk")
    driver = {"name": "qemu", "type": str(disk.format), "cache": str(disk.cache), "io": str(disk.aio)}
    if disk.discard:
        driver["discard"] = "unmap"
    _sub(element, "driver", **driver)
    _sub(element, "source", **({"dev": str(disk.path)} if disk.passthrough else {"file": str(disk.path)}))
    if disk.base is not None:
        # The format is the base's own, which only `qemu-img info` knows; qcow2 is what cloud images are.
        backing = _sub(element, "backingStore", type="file")
        _sub(backing, "format", type="qcow2")
        _sub(backing, "source", file=str(disk.base))
    _sub(element, "target", dev=scsi_disk_name(unit), bus="scsi")
    _sub(element, "alias", name=f"ua-{disk.id}")
    _sub(element, "address", type="drive", controller="0", bus="0", target=str(unit), unit="0")
    if disk.readonly:
        _sub(element, "readonly")
    if spec.boot.disk == disk.id:
        _sub(element, "boot", order="1")


def _cloud_init_seed(devices: ET.Element, unit: int, seed: Path) -> None:
    element = _sub(devices, "disk", type="file", device="cdrom")
    _sub(element, "driver", name="qemu", type="raw")
    _sub(element, "source", file=str(seed))
    _sub(element, "target", dev=scsi_disk_name(unit), bus="scsi")
    _sub(element, "alias", name=f"ua-{SEED_ID}")
    _sub(element, "address", type="drive", controller="0", bus="0", target=str(unit), unit="0")
    _sub(element, "readonly")


def scsi_disk_name(index: int) -> str:
    """sda .. sdz, sdaa ..: the guest-visible names libvirt wants as targets."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("a") + remainder) + letters
    return f"sd{letters}"


def _nic(devices: ET.Element, spec: Spec, nic: Nic, vhost_net: bool) -> None:
    if is_user(nic):
        _user_nic(devices, spec, nic)
        return
    element = _sub(devices, "interface", type="bridge" if nic.bridge else "ethernet")
    if nic.bridge:
        _sub(element, "source", bridge=nic.bridge)
        _sub(element, "target", dev=nic.host_tap)
    else:
        # No managed="no": with no vmrun preflight on the libvirt side, libvirt creates the (multiqueue) tap
        # under vmrun's name and deletes it when the domain stops, as `vmrun up`/`down` would.
        _sub(element, "target", dev=nic.host_tap)
    _sub(element, "mac", address=nic.guest_mac)
    _sub(element, "model", type="virtio")
    use_vhost = vhost_enabled(nic, vhost_net=vhost_net)
    driver = {"name": "vhost" if use_vhost else "qemu"}
    if nic.queues > 1:
        driver["queues"] = str(nic.queues)
    _sub(element, "driver", **driver)
    _sub(element, "alias", name=f"ua-{nic.id}")


def _user_nic(devices: ET.Element, spec: Spec, nic: Nic) -> None:
    """libvirt's user network is the same slirp; its <portForward> needs the passt backend (notes say so)."""
    element = _sub(devices, "interface", type="user")
    _sub(element, "mac", address=nic.guest_mac)
    _sub(element, "model", type="virtio")
    _sub(element, "alias", name=f"ua-{nic.id}")


def _user_nic_notes(nic: Nic) -> list[str]:
    notes = []
    if nic.forward:
        notes.append(f"nics {nic.id}: libvirt's user network (slirp) takes no port forwards (<portForward> needs "
                     f"the passt backend); forward by hand: {'; '.join(map(str, forwards(nic)))}")
    if nic.restrict:
        notes.append(f"nics {nic.id}: libvirt has no restrict: the guest can reach the host's networks")
    return notes


def _share(devices: ET.Element, share: Share, notes: list[str]) -> None:
    mode = _ACCESS_MODES.get(share.security_model)
    if mode is None:
        notes.append(f"shares {share.id}: libvirt has no mapped-file access mode; exported as mapped (xattr)")
        mode = "mapped"
    element = _sub(devices, "filesystem", type="mount", accessmode=mode)
    _sub(element, "driver", type="path")
    _sub(element, "source", dir=str(share.path))
    _sub(element, "target", dir=share.tag)
    _sub(element, "alias", name=f"ua-{share.id}")
    if share.readonly:
        _sub(element, "readonly")


def _vfio(devices: ET.Element, vfio: Vfio) -> None:
    element = _sub(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
    domain, bus, slot_function = vfio.host.split(":")
    slot, function = slot_function.split(".")
    source = _sub(element, "source")
    _sub(source, "address", domain=f"0x{domain}", bus=f"0x{bus}", slot=f"0x{slot}", function=f"0x{function}")
    _sub(element, "alias", name=f"ua-{vfio.id}")


def _unexpressed(spec: Spec, seed: Path) -> list[str]:
    notes = []
    if spec.post_boot:
        notes.append(f"post_boot: {len(spec.post_boot)} hook(s) run by vmrun over the agent; libvirt has no such step")
    notes += [note for nic in spec.nics if is_user(nic) for note in _user_nic_notes(nic)]
    if any(nic.queues > 1 for nic in spec.nics):
        notes.append("nics: libvirt sets the queues but not the guest's `ethtool -L combined N`; "
                     "modern guest kernels enable min(N, vCPUs) pairs by default")
    notes.append(f"host.user: libvirt runs qemu as the user in its qemu.conf, not {spec.host.user!r}; "
                 "that user must reach the kernel, initrd, disk images and shares")
    if spec.host.ksm:
        notes.append("host.ksm: libvirt does not turn KSM on; enable /sys/kernel/mm/ksm/run on the host")
    for disk in spec.disks:
        if disk.base is not None:
            lifetime = "; libvirt keeps it across runs (vmrun recreates it at every up)" if disk.ephemeral else ""
            notes.append(f"disks {disk.id}: libvirt does not create the overlay: `vmrun up` does, or qemu-img create "
                         f"-f qcow2 -b {disk.base} -F qcow2 {disk.path}; backingStore says the base is qcow2{lifetime}")
    if spec.cloud_init is not None:
        notes.append(f"cloud_init: libvirt does not build the seed; `vmrun up` writes it to {seed} (afresh "
                     "at every up)")
    return notes


def libvirt_domain(spec: Spec, *, accel: Accel, vhost_net: bool, seed: Path) -> Export:
    """seed: where `vmrun up` writes the VM's cloud-init seed (RunPaths.cloud_init_seed)."""
    ET.register_namespace("qemu", QEMU_NAMESPACE)
    notes = _unexpressed(spec, seed)
    domain = ET.Element("domain", type="kvm" if accel is Accel.KVM else "qemu")
    _sub(domain, "name", spec.name)
    _sub(domain, "uuid", domain_uuid(spec))
    if spec.description:
        _sub(domain, "description", spec.description)
    _sub(domain, "memory", str(spec.machine.memory // KIB), unit="KiB")
    _memory_backing(domain, spec)
    _sub(domain, "vcpu", str(spec.machine.cpus))
    _tuning(domain, spec)
    _os(domain, spec)
    _sub(_sub(domain, "features"), "acpi")
    _cpu(domain, spec, accel)
    devices = _sub(domain, "devices")
    if spec.disks or spec.cloud_init is not None:
        controller = _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
        if spec.machine.io_thread:
            _sub(controller, "driver", iothread="1")
    for unit, disk in enumerate(spec.disks):
        _disk(devices, spec, disk, unit)
    if spec.cloud_init is not None:
        _cloud_init_seed(devices, len(spec.disks), seed)
    for nic in spec.nics:
        _nic(devices, spec, nic, vhost_net)
    for share in spec.shares:
        _share(devices, share, notes)
    for vfio in spec.vfio:
        _vfio(devices, vfio)
    # vmrun runs qemu with -nodefaults; libvirt would otherwise add a USB controller and a memory balloon.
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    _sub(devices, "serial", type="pty")
    _sub(devices, "console", type="pty")
    if spec.agent.enabled:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name=AGENT_PORT_NAME)
    if spec.qemu.extra_args:
        commandline = _sub(domain, f"{{{QEMU_NAMESPACE}}}commandline")
        for arg in spec.qemu.extra_args:
            _sub(commandline, f"{{{QEMU_NAMESPACE}}}arg", value=arg)
    ET.indent(domain)
    return Export(ET.tostring(domain, encoding="unicode") + "\n", tuple(notes))
