"""Host preflight's plan: what the host has (findings) and the ordered host changes the spec needs, computed
from reads and probes only. vmrun.preflight.apply makes the changes.

    plan = plan_preflight(spec, host, facts, others=...)   # reads only
    refuse(plan)                                            # PreflightRefused (exit 3) listing every failure
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from vmrun.errors import PreflightError
from vmrun.host.access import blocked_for
from vmrun.host.facts import (
    AccelChoice,
    HostFacts,
    PrivilegeDrop,
    choose_accel,
    drops_privileges,
    keeps_root,
    qemu_user,
)
from vmrun.host.mounts import mount_of, parse_mountinfo
from vmrun.host.system import Host, HostCommandError, User, format_cpu_list, hugepage_pool
from vmrun.host.view import KSM_RUN
from vmrun.preflight.changes import (
    Action,
    AppliedChange,
    Change,
    Finding,
    Found,
    OnDown,
    Status,
    Step,
    fail_finding,
    ok_finding,
    warn_finding,
)
from vmrun.preflight.vfio import inspect_memlock, inspect_vfio
from vmrun.record import Record
from vmrun.spec.check import tcg_limits
from vmrun.spec.model import Accel, Disk, Firmware, Nic, SecurityModel, Share, Spec, Vhost
from vmrun.spec.usernet import forwards, is_user
from vmrun.units import KIB, format_size

__all__ = [
    "AppliedChange", "Change", "Finding", "Others", "Plan", "PreflightRefused", "Status", "plan_preflight", "refuse",
]

IFF_UP = 0x1  # in /sys/class/net/IF/flags
IFF_MULTI_QUEUE = 0x100  # in /sys/class/net/TAP/tun_flags
SYSTEM_USER = "vmrun"
TINY_GUEST_IMAGES = "images/tiny/"
SECTOR = 512
REFUSED_HINT = "nothing was changed; `vmrun preflight --dry-run SPEC` shows the whole plan"


@attrs.frozen(repr=False)
class Others(Record):
    """What the other running vmrun VMs hold, read from their state files by the caller."""

    writable_disks: frozenset[str] = frozenset()
    taps: Mapping[str, str] = attrs.field(factory=dict)  # tap -> the VM that uses it
    vfio: Mapping[str, str] = attrs.field(factory=dict)  # PCI function -> the VM that passes it
    want_ksm: bool = False
    ksm_previous: str | None = None  # the KSM run value one of them restores when it goes down last
    hugepages: Mapping[str, int] = attrs.field(factory=dict)  # pool's nr_hugepages path -> pages they added
    ksm_keepers: tuple[str, ...] = ()  # the VMs that want KSM (or may: their state is damaged)


NO_OTHERS = Others()


@attrs.frozen(repr=False)
class Plan(Record):
    accel: AccelChoice
    findings: tuple[Finding, ...]
    changes: tuple[Change, ...]
    memlock: int | None  # RLIMIT_MEMLOCK in bytes the launcher gives qemu; None leaves it as it is
    others: Others = NO_OTHERS  # what the other VMs held when this plan was made

    @property
    def failures(self) -> tuple[Finding, ...]:
        return tuple(finding for finding in self.findings if finding.status is Status.FAIL)

    def to_json(self) -> dict[str, Any]:
        return {
            "accel": str(self.accel.accel), "accel_reason": self.accel.reason,
            "checks": [finding.to_json() for finding in self.findings],  # the contract's key
            "changes": [change.to_json() for change in self.changes],
            "memlock": self.memlock,
        }

    def to_text(self) -> str:
        checks = _columns([(str(c.status), c.name, c.message) for c in self.findings])
        changes = _columns([(str(c.step.action), c.step.path, c.step.value) for c in self.changes])
        return "\n".join(["checks:", *checks, "changes:" if changes else "changes: none", *changes])


def _columns(rows: Sequence[tuple[str, str, str]]) -> list[str]:
    widths = [max((len(row[column]) for row in rows), default=0) for column in (0, 1)]
    return [f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows]


# --- what the host has: each yields its findings and the changes it needs ------------------------------


def inspect_accel(spec: Spec, facts: HostFacts) -> Found:
    choice = choose_accel(spec, facts)
    if choice.accel is Accel.KVM and not facts.kvm_usable:
        yield fail_finding("accelerator", f'machine.accel is "kvm" but {facts.kvm_reason}; use "auto" or "tcg"')
        return
    refusals = []
    if choice.accel is Accel.TCG and spec.machine.accel is not Accel.TCG:
        # validate refuses these for accel = "tcg"; with "auto" only the host tells that it gets TCG.
        if spec.machine.cpu_model == "host":
            refusals.append(f'machine.cpu_model = "host" needs KVM, but this host gets TCG ({choice.reason}): '
                            "set accel = kvm on a host with hardware virtualization, or drop cpu_model")
        refusals += [f"{problem.path}: {problem.message}, but this host gets TCG ({choice.reason}): {problem.hint}"
                     for problem in tcg_limits(spec.machine)]
    for refusal in refusals:
        yield fail_finding("accelerator", refusal)
    if not refusals:
        yield ok_finding("accelerator", f"{choice.accel} ({choice.reason})")


def inspect_qemu(spec: Spec, facts: HostFacts) -> Found:
    binary = spec.qemu.binary
    if facts.qemu_refused is not None:
        yield fail_finding("qemu", f"refusing to run {binary}: {facts.qemu_refused}; qemu must be root's (or "
                                 "yours), in directories that only root (or you) can write")
    elif facts.qemu_not_run is not None:
        yield warn_finding("qemu", f"{binary} not run by a dry run: {facts.qemu_not_run}; preflight and up run it, "
                                 "as it is yours")
    elif facts.qemu_version is None:
        yield fail_finding("qemu", f"{binary} not found (Debian: apt-get install qemu-system-x86)")
    elif drops_privileges(spec, facts) and facts.privilege_drop is PrivilegeDrop.IMPOSSIBLE:
        yield fail_finding("qemu", f"{binary} {facts.qemu_version} has {facts.privilege_drop}, so it would keep "
                                 "root's privileges: use a qemu that has either, or run vmrun as another user")
    elif drops_privileges(spec, facts):
        yield ok_finding("qemu", f"{binary} {facts.qemu_version}; it drops privileges with {facts.privilege_drop}")
    else:
        yield ok_finding("qemu", f"{binary} {facts.qemu_version}")


def inspect_qemu_user(spec: Spec, host: Host, facts: HostFacts) -> Found:
    name = "qemu user"
    if not facts.drop_privileges:
        yield ok_finding(name, f"vmrun is not root: qemu runs as {host.current_user().name}")
    elif keeps_root(spec, facts):
        yield warn_finding(name, 'qemu keeps root\'s privileges (host.user = "root", host.allow_root = true): a guest '
                               "that breaks out of qemu owns the host")
    elif host.user(spec.host.user) is not None:
        yield ok_finding(name, f"qemu drops privileges to {spec.host.user}")
    elif spec.host.user == SYSTEM_USER:
        yield ok_finding(name, f"creating system user {SYSTEM_USER} for qemu; down keeps it")
        passwd = "/etc/passwd"
        yield Change(
            Step.command(passwd, "useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                         SYSTEM_USER),
            (Step.command(passwd, "userdel", SYSTEM_USER),),
            OnDown.KEEP,
        )
    else:
        yield fail_finding(name, f"host.user {spec.host.user!r} does not exist: create it, or use {SYSTEM_USER!r} "
                               "(preflight creates that one)")


def _is_not(kind: str | None, wanted: str) -> str:
    return "does not exist" if kind is None else f"is a {kind}, not a {wanted}"


def inspect_boot_files(spec: Spec, host: Host) -> Found:
    for key, path in (("kernel", spec.boot.kernel), ("initrd", spec.boot.initrd)):
        if path is None:
            continue
        kind = host.kind(path)
        if kind == "file":
            yield ok_finding(f"boot.{key}", str(path))
        else:
            hint = " (run integration/tiny-guest/build)" if TINY_GUEST_IMAGES in path.as_posix() else ""
            yield fail_finding(f"boot.{key}", f"{path} {_is_not(kind, 'file')}{hint}")


def inspect_firmware(spec: Spec, host: Host, facts: HostFacts) -> Found:
    if spec.boot.firmware is not Firmware.UEFI:
        return
    missing = [str(path) for path in (facts.ovmf_code, facts.ovmf_vars_template) if host.kind(path) != "file"]
    if missing:
        yield fail_finding("firmware", f"UEFI needs {' and '.join(missing)} (Debian: apt-get install ovmf)")
    else:
        yield ok_finding("firmware", f"UEFI from {facts.ovmf_code}")


def inspect_disks(spec: Spec, host: Host, others: Others, user: User | None) -> Found:
    in_use = {host.resolve(path) or path for path in others.writable_disks}
    owner = user.name if user else spec.host.user
    for index, disk in enumerate(spec.disks):
        name = f"disks {disk.id}"
        kind = host.kind(disk.path)
        if (host.resolve(disk.path) or str(disk.path)) in in_use:
            yield fail_finding(name, f"{disk.path} is already used writable by another running vmrun VM")
        elif isinstance(disk.base, Path):
            yield from _inspect_overlay(name, disk, disk.base, kind, host, user, in_use, qemu_runs_as=owner)
        elif disk.base is not None:  # the caller plans with vmrun.spec.images.with_cached_bases
            yield fail_finding(name, f"base {disk.base} is not in the image cache")
        elif disk.passthrough:
            yield _passthrough_finding(name, disk.path, kind, host)
        elif kind in ("file", "block device"):
            yield ok_finding(name, str(disk.path))
        elif kind is not None:
            yield fail_finding(name, f"{disk.path} is a {kind}, not a disk image")
        elif disk.size is None:
            yield fail_finding(name, f"{disk.path} does not exist; set disks[{index}].size to create it")
        else:
            yield from _create_image(name, disk, host, size_bytes=disk.size)


def _passthrough_finding(name: str, path: Path, kind: str | None, host: Host) -> Finding:
    """scsi-block hands the guest's SCSI commands to the device (SG_IO): only a SCSI disk takes them (qemu
    refuses a loop device: "cannot get SG_IO version number"), and a partition's would reach its whole disk."""
    if kind != "block device":
        return fail_finding(name, f"passthrough needs a block device; {path} {_is_not(kind, 'block device')}")
    number = host.device_number(path)
    if number is None or not host.exists(f"/sys/dev/block/{number}/device/scsi_device"):
        return fail_finding(name, f"passthrough needs a whole SCSI disk (scsi-block sends it SCSI commands); {path} "
                                "is a block device but not one: set passthrough = false to attach it as a plain disk")
    return ok_finding(name, f"{path} is a SCSI disk (scsi-block)")


def _size_text(size_bytes: int) -> str:
    return format_size(size_bytes) if size_bytes % KIB == 0 else str(size_bytes)


@attrs.frozen(repr=False)
class BaseImage(Record):
    """An overlay's base as `qemu-img info` describes it."""

    path: Path
    format: str
    virtual_size: int


def _create_image(name: str, disk: Disk, host: Host, *, size_bytes: int | None, base: BaseImage | None = None,
                  replacing: bool = False) -> Found:
    path = str(disk.path)
    size = [_size_text(size_bytes)] if size_bytes is not None else []
    what = ", ".join([str(disk.format) if base is None else f"an overlay on {base.path} ({base.format})", *size])
    verb = "recreating" if replacing else "creating"
    yield ok_finding(name, f"{verb} {path} ({what}); down {'deletes' if disk.ephemeral else 'keeps'} it")
    for directory in _missing_directories(host, disk.path.parent):
        yield Change(Step(Action.MKDIR, str(directory)), (Step(Action.RMDIR, str(directory)),), OnDown.KEEP)
    backing = ["-b", str(base.path), "-F", base.format] if base is not None else []
    yield Change(
        Step.command(path, "qemu-img", "create", "-q", "-f", str(disk.format), *backing, path, *size),
        (Step(Action.REMOVE, path),),
        # An ephemeral overlay goes at down; any other image is user data from then on: only the failed
        # preflight that made it may remove it.
        OnDown.UNDO if disk.ephemeral else OnDown.KEEP,
    )


def _inspect_overlay(
    name: str, disk: Disk, base_path: Path, kind: str | None, host: Host, user: User | None, in_use: set[str], *,
    qemu_runs_as: str,
) -> Found:
    base = _base_image(base_path, host, user, in_use, qemu_runs_as=qemu_runs_as)
    if isinstance(base, str):
        yield fail_finding(name, base)
        return
    if kind is not None:
        problem = _overlay_problem(disk, base_path, kind, host)
        if problem is not None:
            yield fail_finding(name, problem)
            return
        if not disk.ephemeral:
            yield ok_finding(name, f"{disk.path} (an overlay on {base_path})")
            return
    if disk.size is not None and disk.size < base.virtual_size:
        yield fail_finding(name, f"size {_size_text(disk.size)} is below the virtual size of base {base_path} "
                               f"({_size_text(base.virtual_size)}): an overlay cannot shrink its base")
        return
    yield from _create_image(name, disk, host, size_bytes=disk.size, base=base, replacing=kind is not None)


def _base_image(
    path: Path, host: Host, user: User | None, in_use: set[str], *, qemu_runs_as: str
) -> BaseImage | str:
    """The base's format and virtual size, or why it cannot be one."""
    kind = host.kind(path)
    if kind not in ("file", "block device"):
        return f"base {path} {_is_not(kind, 'disk image')}"
    if (host.resolve(path) or str(path)) in in_use:
        return f"base {path} is used writable by another running vmrun VM; a base must never be written"
    blocked = blocked_for(host, user, path, write=False)
    if blocked:
        return f"qemu runs as {qemu_runs_as}, who cannot read base {path}: {blocked}"
    try:
        info = host.disk_image_info(path)
    except HostCommandError as exc:
        return f"base {path} is not a disk image qemu can open: {exc}"
    size = host.path(path).stat().st_size
    # qemu-img takes any file for a raw image; a text file gives itself away by its size.
    if info.get("format") == "raw" and kind == "file" and (size == 0 or size % SECTOR):
        return f"base {path} is not a disk image: a raw image is whole {SECTOR}-byte sectors, it has {size} bytes"
    return BaseImage(path, str(info.get("format")), int(info.get("virtual-size", 0)))


def _overlay_problem(disk: Disk, base: Path, kind: str, host: Host) -> str | None:
    """Why the existing disk.path is not an overlay on base; None when it is one."""
    recreate = f"delete {disk.path} to recreate it on {base}"
    if kind != "file":
        return f"{disk.path} is a {kind}, not an overlay on {base}"
    try:
        info = host.disk_image_info(disk.path)
    except HostCommandError as exc:
        return f"{disk.path} cannot be opened as an overlay ({exc}): {recreate}"
    if info.get("format") != "qcow2":
        return f"{disk.path} is a {info.get('format')} image, not an overlay on {base}: {recreate}"
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if not backing:
        return f"{disk.path} has no backing file, so it is not an overlay on {base}: {recreate}"
    if (host.resolve(backing) or backing) != (host.resolve(base) or str(base)):
        return f"{disk.path} is an overlay on {backing}, not on {base}: {recreate}, or point base at {backing}"
    return None


def _missing_directories(host: Host, directory: Path) -> list[Path]:
    """The directories to create for directory to exist, outermost first."""
    missing = []
    while host.kind(directory) is None and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing[::-1]


def _tap_mode(nic: Nic) -> list[str]:
    return ["mode", "tap", *(["multi_queue"] if nic.queues > 1 else [])]


def _hex(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def inspect_nic(spec: Spec, nic: Nic, host: Host, facts: HostFacts, user: User | None, others: Others) -> Found:
    if is_user(nic):
        forwarded = "; ".join(map(str, forwards(nic))) or "no port forwards"
        yield ok_finding(f"nics {nic.id}", f"user-mode network in qemu, no host change ({forwarded})")
        return
    tap, name = nic.host_tap, f"nics {nic.id}"
    holder = others.taps.get(tap)
    if holder is not None:
        # Two guests on one tap would share its queues, and the first `down` would pull it from the other.
        yield fail_finding(name, f"tap {tap} is in use by VM {holder}: give this NIC another tap (nics.tap)")
        return
    exists = host.exists(f"/sys/class/net/{tap}")
    if exists:
        yield _existing_tap(tap, name, nic, host, spec, user)
    else:
        yield from _create_tap(tap, name, nic, spec, facts, user)
    if nic.bridge is not None:
        yield from _attach_to_bridge(tap, nic.bridge, name, host, facts, tap_exists=exists)
    yield from _inspect_vhost(name, nic, host, facts)


def _create_tap(tap: str, name: str, nic: Nic, spec: Spec, facts: HostFacts, user: User | None) -> Found:
    mode = _tap_mode(nic)
    owner = user.name if user else spec.host.user
    add = ["ip", "tuntap", "add", "dev", tap, *mode, "user", owner]
    if not facts.drop_privileges:
        yield fail_finding(name, f"tap {tap} does not exist and only root can create it: sudo {' '.join(add)}")
        return
    queues = f"multi_queue for {nic.queues} queue pairs, " if nic.queues > 1 else ""
    yield ok_finding(name, f"creating tap {tap} ({queues}owned by {owner}); down deletes it")
    path = f"/sys/class/net/{tap}"
    yield Change(Step.command(path, *add), (Step.command(path, "ip", "tuntap", "del", "dev", tap, *mode),))


def _existing_tap(tap: str, name: str, nic: Nic, host: Host, spec: Spec, user: User | None) -> Finding:
    flags = _hex(host.read(f"/sys/class/net/{tap}/tun_flags"))
    if flags is None:
        return fail_finding(name, f"{tap} exists but is not a tap device: name another tap in nics.tap")
    multiqueue = bool(flags & IFF_MULTI_QUEUE)
    owner = user.name if user else spec.host.user
    recreate = (f"ip tuntap del dev {tap} mode tap{' multi_queue' if multiqueue else ''}; "
                f"ip tuntap add dev {tap} {' '.join(_tap_mode(nic))} user {owner}")
    if nic.queues > 1 and not multiqueue:
        return fail_finding(name, f"tap {tap} has no multi_queue flag but queues = {nic.queues}; "
                                  f"recreate it: {recreate}")
    if nic.queues == 1 and multiqueue:
        return fail_finding(name, f"tap {tap} is multi_queue but queues = 1, which qemu refuses: set queues > 1, "
                                f"or recreate it: {recreate}")
    holders = host.tap_holders(tap)
    if holders:
        # Another qemu (of a VM under another run directory, or of another tool): a multi_queue tap would
        # take this VM's queues too, and the two guests would share one link.
        pid, command = holders[0]
        return fail_finding(name, f"tap {tap} is open in process {pid} ({command}), which another VM may be "
                                f"using: give this NIC another tap (nics.tap)")
    stranger = _tap_stranger(host, tap, user)
    if stranger is not None:
        return fail_finding(name, f"tap {tap} belongs to {stranger}, not to {owner}, who qemu runs as: "
                                f"use another tap, or recreate it: {recreate}")
    return ok_finding(name, f"using existing tap {tap}")


def _tap_stranger(host: Host, tap: str, user: User | None) -> str | None:
    """The tap's owner or group when they are not qemu's user (-1 in sysfs: anyone may open it)."""
    owner = int(host.read(f"/sys/class/net/{tap}/owner") or -1)
    group = int(host.read(f"/sys/class/net/{tap}/group") or -1)
    if owner != -1 and (user is None or owner != user.uid):
        return f"uid {owner}"
    if group != -1 and (user is None or group not in host.group_ids(user)):
        return f"gid {group}"
    return None


def _attach_to_bridge(tap: str, bridge: str, name: str, host: Host, facts: HostFacts, *, tap_exists: bool) -> Found:
    attach = ["ip", "link", "set", tap, "master", bridge, "up"]
    master = host.link_name(f"/sys/class/net/{tap}/master") if tap_exists else None
    if not host.exists(f"/sys/class/net/{bridge}"):
        yield fail_finding(name, f"bridge {bridge} does not exist (ip link add {bridge} type bridge)")
    elif not host.exists(f"/sys/class/net/{bridge}/bridge"):
        yield fail_finding(name, f"{bridge} is not a bridge (nics.bridge must name one)")
    elif master == bridge:
        yield ok_finding(name, f"tap {tap} is already attached to bridge {bridge}")
    elif master is not None:
        yield fail_finding(name, f"tap {tap} is attached to {master}, not to bridge {bridge}: "
                                 f"ip link set {tap} nomaster")
    elif not facts.drop_privileges:
        yield fail_finding(name, f"only root can attach tap {tap} to bridge {bridge}: sudo {' '.join(attach)}")
    else:
        was_up = bool((_hex(host.read(f"/sys/class/net/{tap}/flags")) or 0) & IFF_UP) if tap_exists else False
        detach = ["ip", "link", "set", tap, "nomaster", *([] if was_up else ["down"])]
        yield ok_finding(name, f"attaching tap {tap} to bridge {bridge}; down detaches it")
        path = f"/sys/class/net/{tap}/master"
        yield Change(Step.command(path, *attach), (Step.command(path, *detach),))


def _inspect_vhost(name: str, nic: Nic, host: Host, facts: HostFacts) -> Found:
    if nic.vhost is Vhost.OFF:
        return
    why_not = "is not readable and writable by this user" if host.exists("/dev/vhost-net") else \
        "is missing (modprobe vhost_net)"
    if facts.vhost_net:
        yield ok_finding(name, "vhost-net on")
    elif nic.vhost is Vhost.ON:
        yield fail_finding(name, f"vhost = true but /dev/vhost-net {why_not}")
    else:
        yield warn_finding(name, f"vhost off: /dev/vhost-net {why_not}, so qemu moves the packets itself (slower)")


def inspect_share(spec: Spec, share: Share, host: Host, facts: HostFacts, user: User | None) -> Found:
    name = f"shares {share.id}"
    kind = host.kind(share.path)
    qemu_is_root = keeps_root(spec, facts)
    problem = None
    if kind != "directory":
        problem = f"{share.path} {_is_not(kind, 'directory')}"
    elif share.security_model is SecurityModel.PASSTHROUGH and not qemu_is_root:
        problem = ('security_model = "passthrough" needs qemu to run as root (vmrun as root with host.user = '
                   '"root" and host.allow_root = true); use "mapped-xattr"')
    elif share.security_model is SecurityModel.MAPPED_XATTR and not host.supports_xattrs(share.path):
        problem = f"{share.path}'s filesystem stores no user xattrs; use security_model = \"mapped-file\""
    else:
        blocked = blocked_for(host, user, share.path, write=not share.readonly)
        if blocked:
            problem = f"qemu runs as {user.name if user else spec.host.user}, who cannot use {blocked}"
    if problem:
        yield fail_finding(name, problem)
    else:
        yield ok_finding(name, f"{share.path} ({share.security_model}{', read-only' if share.readonly else ''})")


def inspect_ksm(spec: Spec, host: Host, facts: HostFacts, others: Others) -> Found:
    if not spec.host.ksm:
        return
    current = host.read(KSM_RUN)
    if current is None:
        yield warn_finding("ksm", "this kernel has no KSM (/sys/kernel/mm/ksm): running without it")
    elif current == "1" and others.ksm_previous is not None:
        # Another vmrun VM turned it on: take on its duty, so the last of them down sets it back.
        yield ok_finding("ksm", f"KSM is on for other vmrun VMs; the last VM down sets run back to "
                              f"{others.ksm_previous}")
        yield _ksm_change(others.ksm_previous)
    elif current == "1":
        yield ok_finding("ksm", "KSM is running")
    elif not facts.drop_privileges:
        yield warn_finding("ksm", f"KSM is off (run = {current}) and only root can turn it on: running without it")
    else:
        yield ok_finding("ksm", f"turning KSM on; the last VM that wants it sets run back to {current} "
                                "when it goes down")
        yield _ksm_change(current)


def _ksm_change(previous: str) -> Change:
    return Change(Step(Action.WRITE, KSM_RUN, "1"), (Step(Action.WRITE, KSM_RUN, previous),), OnDown.SHARED_KSM)


def inspect_cpus(spec: Spec, host: Host) -> Found:
    machine = spec.machine
    if not machine.pinned:
        return
    present, online = host.cpus()
    for field, cpus in (("vcpu_pin", machine.vcpu_pin), ("emulator_pin", machine.emulator_pin)):
        if cpus is None:
            continue
        name = f"machine.{field}"
        absent = sorted(set(cpus) - present)
        offline = sorted(set(cpus) & present - online)
        if absent:
            yield fail_finding(name, f"host CPU {format_cpu_list(set(absent))} does not exist (this host has CPUs "
                                     f"{format_cpu_list(present)})")
        if offline:
            yield fail_finding(name, f"host CPU {format_cpu_list(set(offline))} is offline (online: "
                                     f"{format_cpu_list(online)})")
        if not absent and not offline:
            yield ok_finding(name, f"host CPUs {format_cpu_list(set(cpus))}")


def inspect_numa_node(spec: Spec, host: Host) -> Found:
    node = spec.machine.numa_node
    if node is None:
        return
    present, online = host.numa_nodes()
    if node not in present:
        yield fail_finding("machine.numa_node", f"host NUMA node {node} does not exist (this host has nodes "
                                                f"{format_cpu_list(present)})")
    elif node not in online:
        yield fail_finding("machine.numa_node", f"host NUMA node {node} is offline (online: "
                                                f"{format_cpu_list(online)})")
    else:
        yield ok_finding("machine.numa_node", f"guest RAM bound to host NUMA node {node}")


def inspect_hugepages(spec: Spec, host: Host, facts: HostFacts, others: Others) -> Found:
    machine, name = spec.machine, "machine.hugepages"
    if machine.hugepages is None:
        return
    page = machine.hugepages.bytes
    pool = hugepage_pool(page, machine.numa_node)
    where = f"{machine.hugepages} pool" + (f" of NUMA node {machine.numa_node}" if machine.numa_node is not None
                                           else "")
    counts = host.hugepage_counts(pool)
    if counts is None:
        yield fail_finding(name, f"this host has no {where} ({pool})")
        return
    needed = machine.memory // page
    missing = needed - (counts["free"] - counts["reserved"])
    if missing <= 0:
        yield ok_finding(name, f"{needed} pages from the {where} ({counts['free']} free)")
        return
    available = host.memory_available()
    if not facts.drop_privileges:
        yield fail_finding(name, f"{needed} pages needed, {counts['free'] - counts['reserved']} free in the {where}, "
                                 f"and only root can reserve more: sudo vmrun preflight")
    elif available is not None and missing * page > available:
        yield fail_finding(name, f"{needed} pages needed, {counts['free'] - counts['reserved']} free in the {where}, "
                                 f"and the pool cannot grow by {format_size(missing * page)}: the host has "
                                 f"{format_size(available)} available")
    else:
        total = f"{pool}/nr_hugepages"
        without_vmrun = counts["total"] - others.hugepages.get(total, 0)
        yield ok_finding(name, f"reserving {missing} more pages in the {where}; down gives them back")
        yield Change(Step(Action.WRITE, total, str(counts["total"] + missing)),
                     (Step(Action.WRITE, total, str(without_vmrun)),), OnDown.SHARED_HUGEPAGES, pages=missing)


def inspect_run_dir(host: Host, run_dir: Path) -> Found:
    """qemu makes its monitor's, agent's and console's sockets in the run dir: some file systems (9p) cannot
    hold them, and qemu would fail only after every host change was made."""
    missing = _missing_directories(host, run_dir)
    directory = missing[0].parent if missing else run_dir  # where the run dir will be made
    if host.socket_refusal(directory) is None:
        yield ok_finding("run dir", f"{run_dir}: qemu's sockets go there")
        return
    mount = mount_of(parse_mountinfo(host.read("/proc/self/mountinfo") or ""), str(directory))
    filesystem = mount.fstype if mount else "unknown"
    yield fail_finding("run dir", f"cannot create sockets in {directory} (file system {filesystem}): use --run-dir "
                                "on a local file system such as /run")


def plan_preflight(
    spec: Spec, host: Host, facts: HostFacts, *, others: Others = NO_OTHERS, run_dir: Path | None = None
) -> Plan:
    """Every check and the changes they need, from reads and probes that leave nothing behind: nothing on the
    host changes. run_dir: where the VM's sockets will be (None: not checked)."""
    user = qemu_user(spec, host, as_root=facts.drop_privileges)
    memlock_finding, memlock = inspect_memlock(spec, host, facts)
    found: list[Finding | Change] = [
        *(inspect_run_dir(host, run_dir) if run_dir is not None else ()),
        *inspect_accel(spec, facts),
        *inspect_qemu(spec, facts),
        *inspect_qemu_user(spec, host, facts),
        *inspect_boot_files(spec, host),
        *inspect_firmware(spec, host, facts),
        *inspect_disks(spec, host, others, user),
        *(found for nic in spec.nics for found in inspect_nic(spec, nic, host, facts, user, others)),
        *(found for share in spec.shares for found in inspect_share(spec, share, host, facts, user)),
        *inspect_vfio(spec, host, facts, user, others.vfio),
        *([memlock_finding] if memlock_finding else []),
        *inspect_ksm(spec, host, facts, others),
        *inspect_cpus(spec, host),
        *inspect_numa_node(spec, host),
        *inspect_hugepages(spec, host, facts, others),
    ]
    return Plan(
        accel=choose_accel(spec, facts),
        findings=tuple(item for item in found if isinstance(item, Finding)),
        changes=tuple(item for item in found if isinstance(item, Change)),
        memlock=memlock,
        others=others,
    )


class PreflightRefused(PreflightError):
    """Failed findings, one line each; nothing was changed."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems), hint=REFUSED_HINT)
        self.problems = tuple(problems)

    def lines(self) -> list[str]:
        return list(self.problems)


def refuse(plan: Plan) -> None:
    """Raise PreflightRefused listing every failed check, if any."""
    if plan.failures:
        raise PreflightRefused([f"preflight: {check.name}: {check.message}" for check in plan.failures])
