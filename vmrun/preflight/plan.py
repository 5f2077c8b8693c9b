"""Host preflight's plan: what the host has (findings) and the ordered host changes the spec needs, computed
from reads and probes only. vmrun.preflight.apply makes the changes.

    plan = plan_preflight(spec, host, facts, others=...)   # reads only
    refuse(plan)                                            # PreflightRefused (exit 3) listing every failure
"""

from __future__ import annotations

from collections.abc import Sequence
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
from vmrun.host.system import Host, HostCommandError, User
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
from vmrun.preflight.network import inspect_nic
from vmrun.preflight.others import NO_OTHERS, Others
from vmrun.preflight.resources import inspect_cpus, inspect_hugepages, inspect_ksm, inspect_numa_node
from vmrun.preflight.vfio import inspect_memlock, inspect_vfio
from vmrun.record import Record
from vmrun.spec.check import tcg_limits
from vmrun.spec.model import Accel, Disk, Firmware, SecurityModel, Share, Spec
from vmrun.units import KIB, format_size

__all__ = [
    "AppliedChange", "Change", "Finding", "Others", "Plan", "PreflightRefused", "Status", "plan_preflight", "refuse",
]

SYSTEM_USER = "vmrun"
TINY_GUEST_IMAGES = "images/tiny/"
SECTOR = 512
REFUSED_HINT = "nothing was changed; `vmrun preflight --dry-run SPEC` shows the whole plan"


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
