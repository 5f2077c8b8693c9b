"""The spec model: one frozen attrs class per TOML section.

Structure only: types, defaults and closed choices. What makes a well-typed spec
wrong (duplicate ids, queues > cpus, ...) lives in ``vmrun.spec.check``.
TOML keys are the attribute names, so error paths read like the user's file.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import NewType

import attrs

from vmrun.record import Record

# Bytes, parsed from "8G"; a distinct type so the converter knows to parse it.
ByteSize = NewType("ByteSize", int)
# Seconds, parsed from "120s".
Seconds = NewType("Seconds", float)


class Accel(enum.StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class HugePages(enum.StrEnum):
    """The huge page size guest RAM comes from; the value is how Linux names the pool in sysfs."""

    M2 = "2M"
    G1 = "1G"

    @property
    def bytes(self) -> int:
        return 2 * 1024**2 if self is HugePages.M2 else 1024**3


class Firmware(enum.StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


class DiskFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


class Cache(enum.StrEnum):
    NONE = "none"
    WRITEBACK = "writeback"
    WRITETHROUGH = "writethrough"
    DIRECTSYNC = "directsync"
    UNSAFE = "unsafe"


class Aio(enum.StrEnum):
    THREADS = "threads"
    NATIVE = "native"
    IO_URING = "io_uring"


class Vhost(enum.StrEnum):
    """Written in TOML as true, false or "auto"."""

    ON = "on"
    OFF = "off"
    AUTO = "auto"


class NicMode(enum.StrEnum):
    TAP = "tap"  # a host tap that preflight creates (root), optionally on a bridge
    USER = "user"  # qemu's own user-mode network stack: no host change, reached through port forwards


class SecurityModel(enum.StrEnum):
    PASSTHROUGH = "passthrough"
    MAPPED_XATTR = "mapped-xattr"
    MAPPED_FILE = "mapped-file"
    NONE = "none"


@attrs.frozen(repr=False)
class Machine(Record):
    type: str = "q35"
    accel: Accel = Accel.AUTO
    cpus: int = 1
    memory: ByteSize = ByteSize(1024**3)
    cpu_model: str | None = None
    hugepages: HugePages | None = None
    vcpu_pin: tuple[int, ...] | None = None  # host CPU of vCPU i
    emulator_pin: tuple[int, ...] | None = None  # host CPUs of qemu's other threads
    io_thread: bool = False
    numa_node: int | None = None

    @property
    def pinned(self) -> bool:
        """qemu starts paused so vmrun can pin its threads before the guest runs."""
        return self.vcpu_pin is not None or self.emulator_pin is not None


@attrs.frozen(repr=False)
class Boot(Record):
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    disk: str | None = None
    firmware: Firmware = Firmware.BIOS


class ImageUrl(str):
    """A base image to download (an https, http or file URL), verified against its disk's base_digest."""


@attrs.frozen(repr=False)
class Disk(Record):
    id: str
    path: Path
    format: DiskFormat = DiskFormat.RAW
    size: ByteSize | None = None
    cache: Cache = Cache.WRITEBACK
    aio: Aio = Aio.THREADS
    discard: bool = False
    readonly: bool = False
    passthrough: bool = False
    # A read-only backing image: `path` is a qcow2 overlay on it, created by preflight when missing.
    base: Path | ImageUrl | None = None
    base_digest: str | None = None  # "sha256:<hex>" or "sha512:<hex>": required with a URL base
    ephemeral: bool = False  # the overlay is created afresh at every `up` and deleted at `down`


@attrs.frozen(repr=False)
class Nic(Record):
    id: str
    tap: str | None = None
    bridge: str | None = None
    queues: int = 1
    vhost: Vhost = Vhost.AUTO
    mac: str | None = None
    mode: NicMode = NicMode.TAP
    # user mode only: host->guest port forwards, "tcp:2222:22" or "tcp:0.0.0.0:2222:22" (vmrun.spec.usernet)
    forward: tuple[str, ...] = ()
    restrict: bool = False  # user mode only: the guest reaches nothing outside; forwards still work

    # Loading a spec fills in tap (tap NICs) and mac (every NIC) when the spec leaves them out
    # (vmrun.spec.naming.with_derived_names): past the checks, every stage reads them here.
    @property
    def host_tap(self) -> str:
        if self.tap is None:
            raise ValueError(f"NIC {self.id} has no tap: a user-mode NIC, or a spec vmrun did not load")
        return self.tap

    @property
    def guest_mac(self) -> str:
        if self.mac is None:
            raise ValueError(f"NIC {self.id} has no MAC: a spec vmrun did not load")
        return self.mac


@attrs.frozen(repr=False)
class Share(Record):
    id: str
    path: Path
    tag: str
    security_model: SecurityModel = SecurityModel.MAPPED_XATTR
    readonly: bool = False


@attrs.frozen(repr=False)
class Vfio(Record):
    id: str
    host: str


@attrs.frozen(repr=False)
class CloudInit(Record):
    """A NoCloud seed vmrun builds from these files and attaches as a read-only CD-ROM."""

    user_data: Path
    network_config: Path | None = None
    # Merged over vmrun's instance-id and local-hostname; a dict is not hashable, hence hash=False.
    meta_data: dict[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen(repr=False)
class Agent(Record):
    enabled: bool = True
    timeout: Seconds = Seconds(120.0)


@attrs.frozen(repr=False)
class Hook(Record):
    run: tuple[str, ...]
    timeout: Seconds = Seconds(60.0)


ROOT_USER = "root"


@attrs.frozen(repr=False)
class HostOptions(Record):
    user: str = "vmrun"
    # host.user = "root" keeps qemu as root, undoing the privilege drop: only when the spec says it means it.
    allow_root: bool = False
    ksm: bool = False


@attrs.frozen(repr=False)
class QemuOptions(Record):
    binary: str = "qemu-system-x86_64"
    extra_args: tuple[str, ...] = ()


# [kubevirt]: where a cluster gets what the host has (disk images, networks, devices). Read only by
# `vmrun export --format kubevirt`; each table is keyed by the id of the disk, NIC, VFIO device or share.


class RunStrategy(enum.StrEnum):
    ALWAYS = "Always"
    RERUN_ON_FAILURE = "RerunOnFailure"
    MANUAL = "Manual"
    HALTED = "Halted"
    ONCE = "Once"


@attrs.frozen(repr=False)
class KubevirtDisk(Record):
    """Exactly one: an existing PVC, a container image (an ephemeral disk) or a URL a DataVolume imports."""

    pvc: str | None = None
    container_disk: str | None = None
    url: str | None = None


@attrs.frozen(repr=False)
class KubevirtNic(Record):
    network: str | None = None  # a Multus NetworkAttachmentDefinition, "[namespace/]name"; None: the pod network


@attrs.frozen(repr=False)
class KubevirtVfio(Record):
    device_name: str  # the resource name the cluster's permittedHostDevices gives the device


@attrs.frozen(repr=False)
class KubevirtShare(Record):
    pvc: str


@attrs.frozen(repr=False)
class Kubevirt(Record):
    namespace: str | None = None
    run_strategy: RunStrategy = RunStrategy.ALWAYS
    secure_boot: bool = False  # UEFI Secure Boot (with SMM, which it needs)
    kernel_image: str | None = None  # a container image holding boot.kernel and boot.initrd at its root
    live_migrate: bool = False  # a node drain moves the VM (evictionStrategy LiveMigrate) instead of stopping it
    # Dicts are not hashable, hence hash=False.
    disks: dict[str, KubevirtDisk] = attrs.field(factory=dict, hash=False)
    nics: dict[str, KubevirtNic] = attrs.field(factory=dict, hash=False)
    vfio: dict[str, KubevirtVfio] = attrs.field(factory=dict, hash=False)
    shares: dict[str, KubevirtShare] = attrs.field(factory=dict, hash=False)


@attrs.frozen(repr=False)
class Spec(Record):
    name: str
    description: str | None = None
    machine: Machine = Machine()
    boot: Boot = Boot()
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    shares: tuple[Share, ...] = ()
    vfio: tuple[Vfio, ...] = ()
    cloud_init: CloudInit | None = None
    agent: Agent = Agent()
    post_boot: tuple[Hook, ...] = ()
    host: HostOptions = HostOptions()
    qemu: QemuOptions = QemuOptions()
    kubevirt: Kubevirt = Kubevirt()
