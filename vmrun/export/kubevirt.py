"""The same VMs as KubeVirt (kubevirt.io/v1) VirtualMachine manifests, with the Secrets they need. Pure: specs
and their cloud-init texts in, YAML out.

What the spec means is mapped, not only its shape: the cluster's sources for disks, networks, devices and shares
come from the spec's [kubevirt] table; what KubeVirt does differently is said in a comment in the YAML (and as a
note), and what it cannot do at all is one SpecError listing every such field with what to add.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import attrs
import yaml

from vmrun.errors import Problem, SpecError
from vmrun.export import Export
from vmrun.guest.cloudinit import CLOUD_CONFIG
from vmrun.qemu.render import SEED_ID
from vmrun.record import Record
from vmrun.spec import kubenames
from vmrun.spec.images import scheme_of
from vmrun.spec.model import Aio, Cache, Disk, Firmware, HugePages, ImageUrl, Nic, Spec
from vmrun.spec.usernet import is_user
from vmrun.units import KIB

API_VERSION = "kubevirt.io/v1"
KUBEVIRT_VERSION = "v1.9.0"  # the release whose CRD schema and admission rules this export is checked against
# KubeVirt refuses inline cloud-init data longer than this (vmi-create-admitter.go); longer goes in a Secret.
MAX_INLINE_CLOUD_INIT = 2048
# KubeVirt's default emulatedMachines on amd64 (virt-config.go): other machine types need the cluster's consent.
EMULATED_MACHINES = re.compile(r"(q35|pc-q35).*")
# qemu gives -smp N to sockets on machine types before 6.2 (smp_props.prefer_sockets), else to cores.
_PC_Q35_VERSION = re.compile(r"pc-q35-(\d+)\.(\d+)")
# KubeVirt's masquerade binding keeps this MAC for the pod's bridge (pkg/network/link/mac.go).
RESERVED_MASQUERADE_MAC = "02:00:00:00:00:00"
# Disk cache modes KubeVirt admits (pkg/storage/admitters/disks.go), the others mapped to the nearest it has.
_CACHES = {
    Cache.NONE: "none", Cache.WRITEBACK: "writeback", Cache.WRITETHROUGH: "writethrough",
    Cache.DIRECTSYNC: "none",  # O_DIRECT kept (aio native stays valid); the guest sees a write cache it must flush
    Cache.UNSAFE: "writeback",  # the guest's flushes are honoured, which is only safer
}
_IO_MODES = {Aio.NATIVE: "native", Aio.THREADS: "threads"}  # io_uring: KubeVirt admits neither, it picks itself
_NO_WRAP = 10_000  # a boot command stays on its line
_QUANTITY_UNITS = (("Ti", KIB**4), ("Gi", KIB**3), ("Mi", KIB**2), ("Ki", KIB))


@attrs.frozen(repr=False)
class CloudInitTexts(Record):
    """The seed's user files as read (cloudinit.seed_texts); the exporter reads no file itself."""

    user_data: str | None = None
    network_config: str | None = None

    @classmethod
    def of(cls, texts: Mapping[str, str]) -> CloudInitTexts:
        """From seed file names (user-data, network-config) to texts."""
        return cls(user_data=texts.get("user-data"), network_config=texts.get("network-config"))


@attrs.frozen(repr=False)
class _Manifests(Record):
    documents: tuple[dict[str, Any], ...]  # the Secret (when there is one) first, then the VirtualMachine
    notes: tuple[str, ...]


def quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity in the largest binary unit that says them exactly (8Gi, 1536Mi)."""
    return next((f"{size // unit}{suffix}" for suffix, unit in _QUANTITY_UNITS if size % unit == 0), str(size))


def object_name(device_id: str) -> str:
    """A device id as a KubeVirt disk, volume, interface or network name, which must be a DNS-1123 label:
    the id itself where it is one, else its '_' as '-' and a short hash that keeps two ids apart."""
    if kubenames.is_dns_label(device_id):
        return device_id
    readable = device_id.replace("_", "-").rstrip("-")
    return f"{readable}-{hashlib.sha256(device_id.encode()).hexdigest()[:6]}"


def _cpu(spec: Spec, notes: list[str]) -> dict[str, Any]:
    versioned = _PC_Q35_VERSION.fullmatch(spec.machine.type)
    old_machine = versioned is not None and (int(versioned[1]), int(versioned[2])) < (6, 2)
    cpus = spec.machine.cpus
    cpu: dict[str, Any] = {"sockets": cpus if old_machine else 1, "cores": 1 if old_machine else cpus, "threads": 1}
    model = spec.machine.cpu_model
    if model is None:
        notes.append("machine.cpu_model: unset, so KubeVirt's default (host-model, which live migration needs) "
                     "rather than vmrun's (host under KVM)")
    elif model in ("host", "max"):
        cpu["model"] = "host-passthrough"
        if model == "max":
            notes.append("machine.cpu_model: KubeVirt has no max; host-passthrough is what max is under KVM")
    else:
        cpu["model"] = model
    machine = spec.machine
    if machine.pinned:
        cpu["dedicatedCpuPlacement"] = True
        notes.append("machine.vcpu_pin: KubeVirt picks the host CPUs itself (dedicatedCpuPlacement: each vCPU on "
                     "a pCPU of its own, on a node with the CPU manager's static policy), not those the spec names")
    if machine.emulator_pin is not None:
        cpu["isolateEmulatorThread"] = True
        notes.append("machine.emulator_pin: KubeVirt gives qemu's other threads one more dedicated pCPU of its own "
                     "choosing (isolateEmulatorThread), not those the spec names")
    return cpu


_PAGE_SIZES = {HugePages.M2: "2Mi", HugePages.G1: "1Gi"}  # Kubernetes' quantities for the page sizes


def _memory(spec: Spec, notes: list[str]) -> dict[str, Any]:
    memory: dict[str, Any] = {"guest": quantity(spec.machine.memory)}
    if spec.machine.hugepages is not None:
        memory["hugepages"] = {"pageSize": _PAGE_SIZES[spec.machine.hugepages]}
    if spec.machine.numa_node is not None:
        notes.append(f"machine.numa_node: KubeVirt does not bind guest RAM to a host node it is told "
                     f"({spec.machine.numa_node}); with dedicated CPUs and huge pages, "
                     "cpu.numa.guestMappingPassthrough follows the node of the CPUs it picks")
    return memory


def _firmware(spec: Spec, notes: list[str]) -> dict[str, Any]:
    firmware: dict[str, Any] = {}
    if spec.boot.firmware is Firmware.UEFI:
        # Persistent: vmrun keeps each VM's OVMF variables across runs; KubeVirt keeps them in the cluster's
        # vmStateStorageClass.
        firmware["bootloader"] = {"efi": {"secureBoot": spec.kubevirt.secure_boot, "persistent": True}}
        notes.append("boot.firmware: the UEFI variables persist (efi.persistent), as vmrun keeps them; the cluster "
                     "needs a vmStateStorageClass for them")
    else:
        firmware["bootloader"] = {"bios": {}}
    if spec.boot.kernel is not None and spec.kubevirt.kernel_image is not None:
        container = {"image": spec.kubevirt.kernel_image, "kernelPath": f"/{spec.boot.kernel.name}"}
        if spec.boot.initrd is not None:
            container["initrdPath"] = f"/{spec.boot.initrd.name}"
        firmware["kernelBoot"] = {"container": container, **({"kernelArgs": spec.boot.append} if spec.boot.append
                                                              else {})}
    return firmware


def _disk(spec: Spec, disk: Disk, notes: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """The disk, its volume and, for a URL, the DataVolume template that imports it."""
    name = object_name(disk.id)
    device: dict[str, Any] = {"name": name, "disk": {"bus": "scsi", **({"readonly": True} if disk.readonly else {})},
                              "cache": _CACHES[disk.cache]}
    if _CACHES[disk.cache] != str(disk.cache):
        notes.append(f"disks {disk.id}: KubeVirt has no cache {disk.cache}; {_CACHES[disk.cache]} instead")
    if disk.aio in _IO_MODES:
        device["io"] = _IO_MODES[disk.aio]
    else:
        notes.append(f"disks {disk.id}: KubeVirt has no aio {disk.aio}; it picks native or threads itself")
    if spec.boot.disk == disk.id:
        device["bootOrder"] = 1
    if disk.discard:
        notes.append(f"disks {disk.id}: discard is KubeVirt's to set (it passes discard=unmap on where the "
                     "volume allows it)")
    source = spec.kubevirt.disks[disk.id]
    template = None
    if source.pvc is not None:
        volume: dict[str, Any] = {"persistentVolumeClaim": {"claimName": source.pvc}}
    elif source.container_disk is not None:
        volume = {"containerDisk": {"image": source.container_disk}}
    else:
        claim = f"{spec.name}-{name}"
        volume = {"dataVolume": {"name": claim}}
        assert disk.size is not None  # the missing size is a problem found before
        template = {"metadata": {"name": claim}, "spec": {
            "source": {"http": {"url": source.url}},
            "storage": {"resources": {"requests": {"storage": quantity(disk.size)}}},
        }}
    ephemeral = source.container_disk is not None
    if ephemeral != disk.ephemeral:
        notes.append(f"disks {disk.id}: " + ("a container disk loses its writes when the VM stops" if ephemeral
                                             else "the volume keeps its writes across runs, where vmrun's ephemeral "
                                             "overlay starts afresh"))
    if isinstance(disk.base, ImageUrl) and source.url == disk.base:
        notes.append(f"disks {disk.id}: CDI imports the URL without checking base_digest {disk.base_digest}")
    if source.container_disk is None and disk.format.value == "qcow2":
        notes.append(f"disks {disk.id}: KubeVirt reads a PVC's image as CDI leaves it (raw, imported from qcow2)")
    return device, {"name": name, **volume}, template


def _interfaces(spec: Spec, notes: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    interfaces, networks = [], []
    for nic in spec.nics:
        name = object_name(nic.id)
        network = spec.kubevirt.nics.get(nic.id)
        interface: dict[str, Any] = {"name": name, "model": "virtio", "macAddress": nic.guest_mac}
        if network is not None and network.network is not None:
            interface["bridge"] = {}
            networks.append({"name": name, "multus": {"networkName": network.network}})
        else:
            interface["masquerade"] = {}
            networks.append({"name": name, "pod": {}})
            notes += _pod_network_notes(nic)
        interfaces.append(interface)
    return interfaces, networks


# What the pod network is, where vmrun's NIC was narrower.
_OPEN = ("on the pod network (masquerade), which is open: the guest reaches every pod and, through the node, "
         "beyond, and every pod reaches the guest's ports")


def _pod_network_notes(nic: Nic) -> Iterator[str]:
    multus = f"give kubevirt.nics.{nic.id}.network for a Multus network"
    if nic.bridge:
        yield f"nics {nic.id}: {_OPEN}, not on bridge {nic.bridge}: {multus}"
    elif not is_user(nic):
        yield (f"nics {nic.id}: a tap without a bridge reaches only what the host routes to it; {_OPEN}: {multus}, "
               "or shut the guest in with a NetworkPolicy")
    if nic.restrict:
        yield f"nics {nic.id}: restrict = true shuts the guest in; {_OPEN}: shut it in with a NetworkPolicy"
    if nic.forward:
        yield f"nics {nic.id}: the pod network has no port forwards: reach the guest through a Service"


_FAILED = "vmrun_multiqueue_failed"  # set by a NIC's line that failed, read by the closing line


def multiqueue_commands(spec: Spec) -> list[str]:
    """vmrun's multiqueue step as boot commands: `ethtool -L <if> combined N` for each NIC, found by its MAC,
    then one that fails when any of them failed. KubeVirt gives every NIC as many queues as vCPUs and never runs
    ethtool, so a user-mode NIC (one queue pair under vmrun) needs its line as much as a tap."""
    if not any(nic.queues > 1 for nic in spec.nics):
        return []
    # cloud-init runs every bootcmd entry in one shell script whose status is its last command's: without the
    # closing test, a failure on any NIC but the last would pass unseen.
    return [*(_ethtool_command(spec, nic) for nic in spec.nics), f'[ -z "${{{_FAILED}-}}" ]']


def _ethtool_command(spec: Spec, nic: Nic) -> str:
    mac = nic.guest_mac
    quoted = shlex.quote(mac)
    # Only devices with a `device` link: a bridge, VLAN or bond of the NIC shows its MAC too but takes no -L.
    # stderr reaches the console (cloud-init's output goes there), so a NIC left at KubeVirt's count is seen.
    return (f'vmrun_if=; for dev in /sys/class/net/*; do if [ -e "$dev/device" ] && '
            f'[ "$(cat "$dev/address" 2>/dev/null)" = {quoted} ]; then vmrun_if=${{dev##*/}}; fi; done; '
            f'if [ -z "$vmrun_if" ]; then echo "vmrun: no network interface has MAC {mac}: its queue pairs stay '
            f'as many as vCPUs" >&2; {_FAILED}=1; '
            f'elif ! ethtool -L "$vmrun_if" combined {nic.queues}; then echo "vmrun: ethtool -L $vmrun_if combined '
            f'{nic.queues} failed: its queue pairs stay as many as vCPUs" >&2; {_FAILED}=1; fi')


def _boot_commands_of(config: Mapping[str, Any]) -> list[Any]:
    """A #cloud-config's own bootcmd as a list, in every shape cloud-init takes: a list (of strings or argv
    lists), a single string (one script), or no entries at all."""
    bootcmd = config.get("bootcmd")
    if bootcmd is None:
        return []
    if isinstance(bootcmd, str):
        return [bootcmd]
    if isinstance(bootcmd, list):
        return bootcmd
    raise ValueError(f"bootcmd is a {type(bootcmd).__name__}, which cloud-init does not run")


def user_data_with(user_data: str | None, boot_commands: Sequence[str]) -> str | None:
    """The spec's user-data with boot commands that run at every boot (cloud-init's bootcmd): added to a
    #cloud-config's own, or beside a #! script in a MIME multipart. ValueError when the #cloud-config's bootcmd
    has a shape cloud-init refuses."""
    if not boot_commands:
        return user_data
    if user_data is None or user_data.startswith(CLOUD_CONFIG):
        config = (yaml.safe_load(user_data) if user_data else None) or {}
        config["bootcmd"] = [*_boot_commands_of(config), *boot_commands]
        return f"{CLOUD_CONFIG}\n" + yaml.dump(config, Dumper=_KeepingNel, sort_keys=False, allow_unicode=True,
                                               width=_NO_WRAP)
    ours = f"{CLOUD_CONFIG}\n" + yaml.safe_dump({"bootcmd": list(boot_commands)}, sort_keys=False, width=_NO_WRAP)
    boundary = "vmrun-" + hashlib.sha256((user_data + ours).encode()).hexdigest()[:16]  # stable, in neither part
    multipart = MIMEMultipart(boundary=boundary)
    multipart.attach(MIMEText(user_data, "x-shellscript", "utf-8"))
    multipart.attach(MIMEText(ours, "cloud-config", "utf-8"))
    return multipart.as_string()


def _user_data_problems(spec: Spec, texts: CloudInitTexts) -> list[Problem]:
    try:
        user_data_with(texts.user_data, multiqueue_commands(spec))
    except ValueError as error:
        return [Problem("cloud_init.user_data", str(error), "write bootcmd as a list of commands, or as one string")]
    return []


def _cloud_init(spec: Spec, texts: CloudInitTexts, secret: str,
                notes: list[str]) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The cloudInitNoCloud volume source, and what goes in the Secret (empty: none needed)."""
    boot_commands = multiqueue_commands(spec)
    user_data = user_data_with(texts.user_data, boot_commands)
    if boot_commands:
        notes.append("nics: KubeVirt gives every NIC as many queue pairs as vCPUs (networkInterfaceMultiqueue), "
                     "not one count per NIC; cloud-init's bootcmd runs vmrun's `ethtool -L <if> combined N` for "
                     "each NIC (by MAC) at every boot, and nothing reads the count back; a NIC it fails on is a "
                     "line on the console and a failed bootcmd. A guest without cloud-init, or without ethtool "
                     "when bootcmd runs (at first boot, before cloud-init installs packages), gets no "
                     "per-NIC count: every NIC keeps as many queue pairs as vCPUs")
    source: dict[str, Any] = {}
    secret_data: dict[str, str] = {}
    for text, inline, reference, key in ((user_data, "userData", "secretRef", "userdata"),
                                         (texts.network_config, "networkData", "networkDataSecretRef", "networkdata")):
        if text is None:
            continue
        if len(text.encode()) <= MAX_INLINE_CLOUD_INIT:
            source[inline] = text
        else:
            source[reference] = {"name": secret}
            secret_data[key] = text
    if spec.cloud_init is not None:
        extra = sorted(spec.cloud_init.meta_data.keys() - {"local-hostname"})
        if extra:
            notes.append(f"cloud_init.meta_data: KubeVirt writes the meta-data itself (instance-id, local-hostname "
                         f"from spec.hostname); {', '.join(extra)} do not reach the guest")
    return source or None, secret_data


def _shares(spec: Spec, notes: list[str]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for share in spec.shares:
        name = object_name(share.id)
        claim: dict[str, Any] = {"claimName": spec.kubevirt.shares[share.id].pvc}
        if share.readonly:
            claim["readOnly"] = True
        notes.append(f"shares {share.id}: KubeVirt has no 9p; virtiofs on the PVC instead (the cluster's virtiofs "
                     f"storage feature gate), which the guest mounts with `mount -t virtiofs {name} DIR` "
                     f"(tag {name}, not {share.tag}); security_model does not apply")
        yield {"name": name, "virtiofs": {}}, {"name": name, "persistentVolumeClaim": claim}


def _host_notes(spec: Spec) -> Iterator[str]:
    yield (f"host.user: KubeVirt runs qemu in the VM's virt-launcher pod as its own unprivileged user (qemu, 107), "
           f"not {spec.host.user!r}")
    if spec.host.ksm:
        yield ("host.ksm: KubeVirt turns KSM on per node (the KubeVirt CR's ksmConfiguration.nodeLabelSelector), "
               "not per VM")
    if spec.machine.accel.value == "tcg":
        yield "machine.accel: KubeVirt uses KVM unless the cluster sets developerConfiguration.useEmulation"
    if spec.post_boot:
        yield f"post_boot: {len(spec.post_boot)} hook(s) run by vmrun over the agent; KubeVirt has no such step"
    if not spec.agent.enabled:
        yield "agent.enabled: KubeVirt always gives the guest an agent channel"
    # A drain stops a VM unless it may move, and it moves only if the new node can mount its disks meanwhile.
    yield ("live migration needs evictionStrategy: LiveMigrate ([kubevirt] live_migrate = true) and storage every "
           "node can mount at once (ReadWriteMany PVCs)"
           + ("; live_migrate sets the first, the second is the cluster's" if spec.kubevirt.live_migrate else ""))


def unmappable(spec: Spec) -> list[Problem]:
    """What KubeVirt cannot be given from this spec, each with what to add."""
    problems = []
    if not kubenames.is_dns_label(spec.name):
        problems.append(Problem("name", f"{spec.name!r} is no Kubernetes name", kubenames.LABEL_RULE))
    if not EMULATED_MACHINES.fullmatch(spec.machine.type):
        problems.append(Problem("machine.type", f"KubeVirt's default emulatedMachines (q35*, pc-q35*) refuse "
                                f"{spec.machine.type!r}", 'use "q35"'))
    if spec.boot.kernel is not None and spec.kubevirt.kernel_image is None:
        problems.append(Problem("boot.kernel", "KubeVirt boots a kernel only from a container image",
                                "add kubevirt.kernel_image, an image with the kernel and initrd at its root"))
    for index, disk in enumerate(spec.disks):
        source = spec.kubevirt.disks.get(disk.id)
        if disk.passthrough:
            problems.append(Problem(f"disks[{index}].passthrough", "KubeVirt has no SCSI passthrough of a host "
                                    "device", "export the disk as an image on a PVC instead"))
        elif source is None:
            problems.append(Problem(f"disks[{index}]", f"disk {disk.id} has no source in the cluster",
                                    f'add [kubevirt.disks.{disk.id}] with pvc, container_disk or url'
                                    + (f' (url = "{disk.base}" imports the base image)'
                                       if isinstance(disk.base, ImageUrl) and scheme_of(disk.base) in ("http", "https")
                                       and disk.size is not None else "")))
        elif source.url is not None and disk.size is None:
            problems.append(Problem(f"disks[{index}].size", "the DataVolume importing kubevirt.disks."
                                    f"{disk.id}.url needs a size", 'add size, e.g. size = "20G"'))
    pod_nics = [nic.id for nic in spec.nics if spec.kubevirt.nics.get(nic.id, None) is None
                or spec.kubevirt.nics[nic.id].network is None]
    if len(pod_nics) > 1:
        problems.append(Problem("nics", f"{', '.join(pod_nics)} are all on the pod network, which takes one",
                                "add kubevirt.nics.<id>.network (a Multus network) for all but one"))
    problems += [Problem(f"nics[{index}].mac", f"KubeVirt keeps {RESERVED_MASQUERADE_MAC} for the pod's bridge",
                         "give the NIC another MAC")
                 for index, nic in enumerate(spec.nics)
                 if nic.id in pod_nics and nic.guest_mac == RESERVED_MASQUERADE_MAC]
    problems += [Problem(f"vfio[{index}]", f"{vfio.id}: KubeVirt selects host devices by resource name, not by PCI "
                         f"address", f'add [kubevirt.vfio.{vfio.id}] device_name = "vendor.com/NAME", as the '
                         "cluster's permittedHostDevices lists it")
                 for index, vfio in enumerate(spec.vfio) if vfio.id not in spec.kubevirt.vfio]
    problems += [Problem(f"shares[{index}]", f"{share.id}: KubeVirt shares a PVC (virtiofs), not a host directory",
                         f'add [kubevirt.shares.{share.id}] pvc = "NAME"')
                 for index, share in enumerate(spec.shares) if share.id not in spec.kubevirt.shares]
    if spec.qemu.extra_args:
        problems.append(Problem("qemu.extra_args", "KubeVirt takes no qemu arguments",
                                "remove them, or map what they add to KubeVirt yourself"))
    if spec.cloud_init is not None:
        hostname = spec.cloud_init.meta_data.get("local-hostname")
        if hostname is not None and not kubenames.is_dns_label(hostname):
            problems.append(Problem("cloud_init.meta_data.local-hostname", f"{hostname!r} is no hostname KubeVirt "
                                    "takes (spec.hostname)", kubenames.LABEL_RULE))
    return problems


def _manifests(spec: Spec, texts: CloudInitTexts) -> _Manifests:
    notes: list[str] = []
    metadata: dict[str, Any] = {"name": spec.name}
    if spec.kubevirt.namespace is not None:
        metadata["namespace"] = spec.kubevirt.namespace
    if spec.description:
        metadata["annotations"] = {"description": spec.description}
    domain: dict[str, Any] = {
        "machine": {"type": spec.machine.type},
        "cpu": _cpu(spec, notes),
        "memory": _memory(spec, notes),
        "firmware": _firmware(spec, notes),
    }
    if spec.machine.io_thread:
        domain["ioThreadsPolicy"] = "shared"  # one iothread for every disk, as vmrun's controller has
    if spec.kubevirt.secure_boot:
        domain["features"] = {"smm": {"enabled": True}}  # KubeVirt refuses Secure Boot without SMM
    disks, volumes, templates = [], [], []
    for disk in spec.disks:
        device, volume, template = _disk(spec, disk, notes)
        disks.append(device)
        volumes.append(volume)
        if template is not None:
            templates.append(template)
    interfaces, networks = _interfaces(spec, notes)
    secret_name = f"{spec.name}-cloud-init"
    cloud_init, secret_data = _cloud_init(spec, texts, secret_name, notes)
    if cloud_init is not None:
        disks.append({"name": SEED_ID, "cdrom": {"bus": "scsi", "readonly": True}})
        volumes.append({"name": SEED_ID, "cloudInitNoCloud": cloud_init})
    shares = list(_shares(spec, notes))
    volumes += [volume for _, volume in shares]
    # vmrun starts qemu with -nodefaults: no balloon, no display, and no network unless the spec has NICs.
    devices: dict[str, Any] = {"disks": disks, "interfaces": interfaces, "autoattachMemBalloon": False,
                               "autoattachGraphicsDevice": False}
    if not spec.nics:
        devices["autoattachPodInterface"] = False
    if any(nic.queues > 1 for nic in spec.nics):
        devices["networkInterfaceMultiqueue"] = True
    if shares:
        devices["filesystems"] = [filesystem for filesystem, _ in shares]
    if spec.vfio:
        devices["hostDevices"] = [{"name": object_name(vfio.id), "deviceName": spec.kubevirt.vfio[vfio.id].device_name}
                                  for vfio in spec.vfio]
    domain["devices"] = devices
    template_spec: dict[str, Any] = {"domain": domain, "networks": networks, "volumes": volumes}
    hostname = spec.cloud_init.meta_data.get("local-hostname") if spec.cloud_init is not None else None
    if hostname is not None:
        template_spec["hostname"] = hostname
    vm_spec: dict[str, Any] = {"runStrategy": str(spec.kubevirt.run_strategy)}
    if templates:
        vm_spec["dataVolumeTemplates"] = templates
    vm_spec["template"] = {"spec": template_spec}
    if spec.kubevirt.live_migrate:
        template_spec["evictionStrategy"] = "LiveMigrate"
    vm = {"apiVersion": API_VERSION, "kind": "VirtualMachine", "metadata": metadata, "spec": vm_spec}
    notes += _host_notes(spec)
    documents: list[dict[str, Any]] = []
    if secret_data:
        secret_metadata = {**{key: metadata[key] for key in ("namespace",) if key in metadata}, "name": secret_name}
        documents.append({"apiVersion": "v1", "kind": "Secret", "metadata": dict(sorted(secret_metadata.items())),
                          "type": "Opaque", "stringData": secret_data})
    documents.append(vm)
    return _Manifests(tuple(documents), tuple(notes))


class _KeepingNel(yaml.SafeDumper):
    """PyYAML writes NEL (U+0085) raw outside double quotes, where YAML reads it as a line break: such a string
    goes in double quotes (NEL as \\N), so it reads back as written."""


class _BlockStrings(_KeepingNel):
    """Multi-line strings (user-data, scripts) as literal blocks, so the YAML reads like the files."""


def _string_style(text: str, *, blocks: bool) -> str | None:
    if "\x85" in text:
        return '"'
    return "|" if blocks and "\n" in text and not any(character in text for character in "\r\t") else None


_KeepingNel.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style=_string_style(text, blocks=False)))
_BlockStrings.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style=_string_style(text, blocks=True)))


def _document(manifest: Mapping[str, Any], comments: Sequence[str]) -> str:
    header = "".join(f"# {line}\n" for line in comments)
    return "---\n" + header + yaml.dump(dict(manifest), Dumper=_BlockStrings, sort_keys=False, allow_unicode=True,
                                        width=120)


def kubevirt_manifests(specs: Sequence[tuple[str, Spec, CloudInitTexts]]) -> Export:
    """One YAML stream for (source, spec, seed texts) of one or more VMs, sorted by name; SpecError for the first
    spec that KubeVirt cannot be given (`unmappable` finds them all)."""
    for source, spec, texts in specs:
        problems = [*unmappable(spec), *_user_data_problems(spec, texts)]
        if problems:
            raise SpecError(source, problems)
    text, all_notes = "", []
    for _, spec, texts in sorted(specs, key=lambda entry: entry[1].name):
        manifests = _manifests(spec, texts)
        comments = [f"{spec.name}: exported by vmrun for KubeVirt {KUBEVIRT_VERSION}; what KubeVirt does "
                     "differently:", *(f"- {note}" for note in manifests.notes)]
        for document in manifests.documents:
            text += _document(document, comments if document["kind"] == "VirtualMachine" else [])
        all_notes += [f"{spec.name}: {note}" for note in manifests.notes]
    return Export(text, tuple(all_notes))
