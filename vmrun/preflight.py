"""Host preflight: a plan of checks and ordered host changes, computed from reads only; then
applied in order with rollback, and undone by `down`.

Every change carries its own undo steps, worked out at planning time from what the host had
before (the previous driver, owner or value), so undoing needs nothing but the change itself.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from vmrun.errors import PreflightError
from vmrun.host import Host, HostCommandError
from vmrun.naming import tap_name
from vmrun.render import AccelChoice, HostFacts, choose_accel
from vmrun.spec import Accel, Firmware, Nic, SecurityModel, Share, Spec, Vhost
from vmrun.units import MIB

IFF_MULTI_QUEUE = 0x100  # in /sys/class/net/TAP/tun_flags
VFIO_DRIVERS = ("vfio-pci", "pci-stub")  # drivers that leave a device safe to share a group with
PCI_BRIDGE_CLASS = "0x0604"
MEMLOCK_MARGIN = 1024 * MIB  # libvirt's and KubeVirt's: guest RAM + 1 GiB
DEVICE_WAIT = 5.0  # seconds for /dev/vfio/G to appear after binding
KSM_RUN = "/sys/kernel/mm/ksm/run"
SYSTEM_USER = "vmrun"


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@attrs.frozen
class CheckResult:
    name: str
    status: Status
    message: str


@attrs.frozen
class Step:
    """One host operation: write a sysfs file, chown a device node, or run a host tool."""

    action: str  # write | chown | run
    path: str  # the host path it acts on, as seen without --host-root
    value: str  # what is written, the new owner, or the command line
    argv: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "path": self.path, "value": self.value}


@attrs.frozen
class Change:
    step: Step
    undo: tuple[Step, ...] = ()
    keep_on_down: bool = False  # user data and system users stay; only a failed preflight removes them
    shared: str | None = None  # a host setting other VMs may rely on ("ksm")

    def to_json(self) -> dict[str, Any]:
        return {
            **self.step.to_json(), "argv": list(self.step.argv),
            "undo": [attrs.asdict(step) for step in self.undo],
            "keep_on_down": self.keep_on_down, "shared": self.shared,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(
            step=Step(data["action"], data["path"], data["value"], tuple(data.get("argv", ()))),
            undo=tuple(Step(u["action"], u["path"], u["value"], tuple(u.get("argv", ()))) for u in data["undo"]),
            keep_on_down=data.get("keep_on_down", False), shared=data.get("shared"),
        )


@attrs.frozen
class Plan:
    accel: AccelChoice
    checks: tuple[CheckResult, ...]
    changes: tuple[Change, ...]
    memlock: int | None  # RLIMIT_MEMLOCK to give qemu, when vmrun can raise it

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if check.status is Status.FAIL)

    def to_json(self) -> dict[str, Any]:
        return {
            "accel": str(self.accel.accel), "accel_reason": self.accel.reason,
            "checks": [attrs.asdict(check) for check in self.checks],
            "changes": [change.step.to_json() for change in self.changes],
            "memlock": self.memlock,
        }

    def to_text(self) -> str:
        lines = [f"  {check.status:<4}  {check.name:<24} {check.message}" for check in self.checks]
        lines.append("changes:" if self.changes else "changes: none")
        lines += [f"  {c.step.action:<5}  {c.step.path}  {c.step.value}" for c in self.changes]
        return "checks:\n" + "\n".join(lines)


@attrs.frozen
class Others:
    """What the other running vmrun VMs hold, so this one does not trample it."""

    writable_disks: frozenset[str] = frozenset()
    want_ksm: bool = False


Found = Iterator[CheckResult | Change]


def ok_check(name: str, message: str) -> CheckResult:
    return CheckResult(name, Status.OK, message)


def warn_check(name: str, message: str) -> CheckResult:
    return CheckResult(name, Status.WARN, message)


def fail_check(name: str, message: str) -> CheckResult:
    return CheckResult(name, Status.FAIL, message)


def _run_change(path: str, value: str, argv: list[str], undo: list[str] | None = None, **options: Any) -> Change:
    undo_steps = (Step("run", path, " ".join(undo), tuple(undo)),) if undo else ()
    return Change(Step("run", path, value, tuple(argv)), undo_steps, **options)


# --- the checks, each yielding results and the changes it needs ------------------------------


def check_accel(spec: Spec, facts: HostFacts) -> Found:
    choice = choose_accel(spec, facts)
    if choice.accel is Accel.KVM and not facts.kvm_usable:
        yield fail_check("accelerator", f'machine.accel is "kvm" but {facts.kvm_reason}; use "auto" or "tcg"')
    else:
        yield ok_check("accelerator", f"{choice.accel} ({choice.reason})")


def check_qemu_user(spec: Spec, host: Host, facts: HostFacts) -> Found:
    if not facts.drop_privileges:
        yield ok_check("qemu user", "vmrun is not root: qemu runs as this user")
    elif host.user(spec.host.user) is not None:
        yield ok_check("qemu user", f"qemu drops privileges to {spec.host.user}")
    elif spec.host.user == SYSTEM_USER:
        yield ok_check("qemu user", f"creating system user {SYSTEM_USER} for qemu (kept after down)")
        argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER]
        yield _run_change("/etc/passwd", f"system user {SYSTEM_USER}", argv, ["userdel", SYSTEM_USER],
                          keep_on_down=True)
    else:
        yield fail_check("qemu user", f"host.user {spec.host.user!r} does not exist; create it or use \"vmrun\"")


def check_boot_files(spec: Spec) -> Found:
    for key in ("kernel", "initrd"):
        path = getattr(spec.boot, key)
        if path is None:
            continue
        if path.is_file():
            yield ok_check(f"boot.{key}", str(path))
        else:
            hint = " (run integration/tiny-guest/build)" if "images/tiny" in str(path) else ""
            yield fail_check(f"boot.{key}", f"{path} does not exist{hint}")


def check_firmware(spec: Spec, facts: HostFacts) -> Found:
    if spec.boot.firmware is not Firmware.UEFI:
        return
    missing = [str(path) for path in (facts.ovmf_code, facts.ovmf_vars_template) if not path.is_file()]
    if missing:
        yield fail_check("firmware", f"UEFI needs {' and '.join(missing)} (Debian: apt-get install ovmf)")
    else:
        yield ok_check("firmware", f"UEFI from {facts.ovmf_code}")


def check_disks(spec: Spec, host: Host, others: Others) -> Found:
    for index, disk in enumerate(spec.disks):
        name = f"disks[{index}] {disk.id}"
        if not disk.readonly and str(disk.path) in others.writable_disks:
            yield fail_check(name, f"{disk.path} is already used writable by another running vmrun VM")
        elif disk.passthrough:
            if host.is_block_device(disk.path):
                yield ok_check(name, f"{disk.path} is a block device (scsi-block)")
            else:
                yield fail_check(name, f"passthrough needs a block device; {disk.path} is not one")
        elif disk.path.exists():
            yield ok_check(name, str(disk.path))
        elif disk.size is not None:
            size = f"{disk.size // MIB}M"
            yield ok_check(name, f"creating {disk.path} ({disk.format}, {size}); it is kept after down")
            if not disk.path.parent.exists():
                parent = str(disk.path.parent)
                yield _run_change(parent, "create directory", ["mkdir", "-p", parent], ["rmdir", parent],
                                  keep_on_down=True)
            argv = ["qemu-img", "create", "-q", "-f", str(disk.format), str(disk.path), size]
            yield _run_change(str(disk.path), f"create {disk.format} {size}", argv, ["rm", "-f", str(disk.path)],
                              keep_on_down=True)
        else:
            yield fail_check(name, f"{disk.path} does not exist; set disks[{index}].size to create it")


def _tap_flags(host: Host, tap: str) -> int | None:
    flags = host.read(f"/sys/class/net/{tap}/tun_flags")
    return int(flags, 16) if flags else None


def check_nic(spec: Spec, nic: Nic, host: Host, facts: HostFacts) -> Found:
    tap, name = tap_name(spec, nic), f"nics {nic.id}"
    multiqueue = nic.queues > 1
    mode = ["mode", "tap", *(["multi_queue"] if multiqueue else [])]
    if host.exists(f"/sys/class/net/{tap}"):
        yield from _existing_tap(tap, name, nic, host, spec)
    else:
        owner = spec.host.user if facts.drop_privileges else None
        argv = ["ip", "tuntap", "add", "dev", tap, *mode, *(["user", owner] if owner else [])]
        yield ok_check(name, f"creating tap {tap}" + (f" with {nic.queues} queues" if multiqueue else ""))
        yield _run_change(f"/sys/class/net/{tap}", " ".join(argv[3:]), argv, ["ip", "tuntap", "del", "dev", tap, *mode])
    if nic.bridge is not None:
        if not host.exists(f"/sys/class/net/{nic.bridge}/bridge"):
            yield fail_check(name, f"bridge {nic.bridge} does not exist (ip link add {nic.bridge} type bridge)")
        else:
            argv = ["ip", "link", "set", tap, "master", nic.bridge, "up"]
            yield _run_change(f"/sys/class/net/{tap}/master", nic.bridge, argv,
                              ["ip", "link", "set", tap, "nomaster"])
    vhost = host.exists("/dev/vhost-net")
    if nic.vhost is Vhost.ON and not vhost:
        yield fail_check(name, "vhost = true but /dev/vhost-net is missing (modprobe vhost_net)")
    elif nic.vhost is Vhost.AUTO and not vhost:
        yield warn_check(name, "no /dev/vhost-net: the NIC runs without vhost (qemu does the packet work)")


def _existing_tap(tap: str, name: str, nic: Nic, host: Host, spec: Spec) -> Found:
    flags = _tap_flags(host, tap)
    if flags is None:
        yield fail_check(name, f"{tap} exists but is not a tap device")
        return
    has_multiqueue = bool(flags & IFF_MULTI_QUEUE)
    if nic.queues > 1 and not has_multiqueue:
        yield fail_check(name, f"tap {tap} has no multi_queue flag but queues = {nic.queues}; recreate it: "
                          f"ip tuntap del dev {tap} mode tap; ip tuntap add dev {tap} mode tap multi_queue")
    elif nic.queues == 1 and has_multiqueue:
        yield fail_check(name, f"tap {tap} is multi_queue but queues = 1; qemu would fail: set queues > 1 or "
                          f"recreate it without multi_queue")
    owner = host.read(f"/sys/class/net/{tap}/owner")
    allowed = {"-1", str(host.euid())}
    qemu_user = host.user(spec.host.user)
    if qemu_user is not None:
        allowed.add(str(qemu_user.pw_uid))
    if owner is not None and owner not in allowed:
        yield fail_check(name, f"tap {tap} belongs to uid {owner}, not to qemu's user")
    else:
        yield ok_check(name, f"using existing tap {tap}")


def check_share(spec: Spec, share: Share, host: Host, facts: HostFacts) -> Found:
    name = f"shares {share.id}"
    if not share.path.is_dir():
        yield fail_check(name, f"{share.path} is not a directory")
        return
    if share.security_model is SecurityModel.MAPPED_XATTR and not host.supports_xattrs(share.path):
        yield fail_check(name, f"{share.path}'s filesystem has no xattrs; use security_model = \"mapped-file\"")
        return
    if share.security_model is SecurityModel.PASSTHROUGH and facts.drop_privileges and spec.host.user != "root":
        yield fail_check(name, 'security_model = "passthrough" needs qemu to run as root; use "mapped-xattr"')
        return
    user = host.user(spec.host.user) if facts.drop_privileges else None
    if user is not None:
        blocked = host.blocked_for(user.pw_name, share.path, write=not share.readonly)
        if blocked:
            yield fail_check(name, f"qemu runs as {user.pw_name}, who cannot use {blocked}")
            return
    yield ok_check(name, f"{share.path} ({share.security_model}{', read-only' if share.readonly else ''})")


def check_ksm(spec: Spec, host: Host) -> Found:
    if not spec.host.ksm:
        return
    current = host.read(KSM_RUN)
    if current is None:
        yield warn_check("ksm", "this kernel has no KSM (/sys/kernel/mm/ksm)")
    elif current == "1":
        yield ok_check("ksm", "KSM is running")
    else:
        yield ok_check("ksm", "turning KSM on")
        yield Change(Step("write", KSM_RUN, "1"), (Step("write", KSM_RUN, current),), shared="ksm")


def plan_preflight(spec: Spec, host: Host, facts: HostFacts, *, others: Others = Others()) -> Plan:
    from vmrun.vfio import check_vfio, memlock_needed

    found: list[CheckResult | Change] = [
        *check_accel(spec, facts),
        *check_qemu_user(spec, host, facts),
        *check_boot_files(spec),
        *check_firmware(spec, facts),
        *check_disks(spec, host, others),
        *(result for nic in spec.nics for result in check_nic(spec, nic, host, facts)),
        *(result for share in spec.shares for result in check_share(spec, share, host, facts)),
        *check_vfio(spec, host, facts),
        *check_ksm(spec, host),
    ]
    if facts.qemu_version is None:
        found.append(fail_check("qemu", f"{spec.qemu.binary} not found (Debian: apt-get install qemu-system-x86)"))
    return Plan(
        accel=choose_accel(spec, facts),
        checks=tuple(item for item in found if isinstance(item, CheckResult)),
        changes=tuple(item for item in found if isinstance(item, Change)),
        memlock=memlock_needed(spec, facts),
    )


# --- applying and undoing ------------------------------------------------------------------


def perform(step: Step, host: Host) -> None:
    if step.action == "write":
        host.write(step.path, step.value)
    elif step.action == "chown":
        _wait_for(host, step.path)
        host.chown(step.path, step.value)
    elif step.action == "run":
        host.run(list(step.argv))
    else:
        raise ValueError(f"unknown host step {step.action!r}")


def _wait_for(host: Host, path: str) -> None:
    deadline = time.monotonic() + DEVICE_WAIT
    while not host.exists(path):
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"{path} did not appear within {DEVICE_WAIT:g} s")
        time.sleep(0.05)


def refuse(plan: Plan) -> None:
    """PreflightError listing every failed check, when there is one."""
    if plan.failures:
        lines = [f"preflight: {check.name}: {check.message}" for check in plan.failures]
        raise PreflightLinesError(lines)


class PreflightLinesError(PreflightError):
    def __init__(self, lines: Sequence[str], *, hint: str | None = None) -> None:
        super().__init__("\n".join(lines), hint=hint)
        self._lines = list(lines)

    def lines(self) -> list[str]:
        return self._lines


def apply_plan(plan: Plan, host: Host) -> tuple[Change, ...]:
    """Every change in order; on the first failure the applied ones are undone, newest first."""
    refuse(plan)
    applied: list[Change] = []
    for change in plan.changes:
        try:
            perform(change.step, host)
        except (OSError, HostCommandError, ValueError) as exc:
            problems = undo_changes(applied, host, rollback=True)
            rolled = "rolled back" if not problems else f"rollback incomplete: {'; '.join(problems)}"
            raise PreflightError(
                f"preflight: {change.step.action} {change.step.path} failed: {exc}",
                hint=f"{len(applied)} earlier change(s) {rolled}",
            ) from exc
        applied.append(change)
    return tuple(applied)


def undo_changes(
    changes: Iterable[Change], host: Host, *, rollback: bool = False, others: Others = Others()
) -> list[str]:
    """Undo in reverse; returns what could not be undone (undo goes on past a failure)."""
    problems = []
    for change in reversed(list(changes)):
        if (change.keep_on_down and not rollback) or (change.shared == "ksm" and others.want_ksm):
            continue
        for step in change.undo:
            try:
                perform(step, host)
            except (OSError, HostCommandError, ValueError) as exc:
                problems.append(f"{step.action} {step.path}: {exc}")
    return problems
