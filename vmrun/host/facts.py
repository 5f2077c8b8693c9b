"""What vmrun knows of the host, and the decisions taken from it (accelerator, vhost).

The host layer reads; this module decides. ``HostFacts`` is the value render, preflight and export
share, so none of them needs the others to know the host.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from vmrun.record import Record
from vmrun.spec.model import ROOT_USER, Accel, Nic, Spec, Vhost

if TYPE_CHECKING:
    from vmrun.host.system import Host, QemuCapabilities, User

_KVM_HARDWARE_MODULES = ("kvm_intel", "kvm_amd")


class PrivilegeDrop(enum.StrEnum):
    """How qemu is told to leave root for host.user."""

    RUN_WITH_USER = "-run-with user="  # QEMU >= 9.1
    RUNAS = "-runas"  # QEMU < 10.0; what a qemu that was not asked is assumed to take
    IMPOSSIBLE = "neither -run-with user= nor -runas"


def choose_privilege_drop(qemu: QemuCapabilities | None) -> PrivilegeDrop:
    if qemu is None:
        return PrivilegeDrop.RUNAS
    if qemu.has_run_with_user:
        return PrivilegeDrop.RUN_WITH_USER
    return PrivilegeDrop.RUNAS if qemu.has_runas else PrivilegeDrop.IMPOSSIBLE


@attrs.frozen(repr=False)
class HostFacts(Record):
    """What render needs to know of the host; gathered by the host layer, so render stays pure."""

    kvm_usable: bool
    kvm_reason: str
    vhost_net: bool = False
    drop_privileges: bool = False  # vmrun runs as root: qemu must not
    privilege_drop: PrivilegeDrop = PrivilegeDrop.RUNAS
    seccomp: bool = False
    ovmf_code: Path = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    qemu_version: str | None = None  # None: the qemu binary is missing, does not run or was not run
    qemu_program: Path | None = None  # the file qemu.binary names, links resolved: what `up` runs
    qemu_not_run: str | None = None  # why vmrun did not run qemu.binary to ask what it supports
    qemu_refused: str | None = None  # why vmrun will not run it even when asked to (`up`, preflight)

    @property
    def ovmf_vars_template(self) -> Path:
        """The pristine variable store shipped beside the firmware code; each VM gets a copy."""
        return self.ovmf_code.with_name(self.ovmf_code.name.replace("CODE", "VARS"))


def drops_privileges(spec: Spec, facts: HostFacts) -> bool:
    """qemu leaves root for host.user: vmrun runs as root and the spec did not keep qemu root
    (host.user = "root", which validate takes only with host.allow_root)."""
    return facts.drop_privileges and spec.host.user != ROOT_USER


def keeps_root(spec: Spec, facts: HostFacts) -> bool:
    return facts.drop_privileges and spec.host.user == ROOT_USER


def qemu_user(spec: Spec, host: Host, *, as_root: bool) -> User | None:
    """Who qemu runs as: whoever runs vmrun, or host.user when that is root (None until preflight creates it)."""
    return host.user(spec.host.user) if as_root else host.current_user()


@attrs.frozen(repr=False)
class AccelChoice(Record):
    accel: Accel
    reason: str


def choose_accel(spec: Spec, facts: HostFacts) -> AccelChoice:
    if spec.machine.accel is Accel.TCG:
        return AccelChoice(Accel.TCG, 'the spec asks for tcg')
    if spec.machine.accel is Accel.KVM:
        return AccelChoice(Accel.KVM, 'the spec asks for kvm')
    if facts.kvm_usable:
        return AccelChoice(Accel.KVM, f"auto: {facts.kvm_reason}")
    return AccelChoice(Accel.TCG, f"auto: {facts.kvm_reason}")


def vhost_enabled(nic: Nic, *, vhost_net: bool) -> bool:
    """The one vhost decision, shared by render and export: auto means on where /dev/vhost-net is usable."""
    return nic.vhost is Vhost.ON or (nic.vhost is Vhost.AUTO and vhost_net)


def kvm_verdict(host: Host) -> tuple[bool, str]:
    """Whether KVM can run stock guests, and why (said to the user either way)."""
    if not host.exists("/dev/kvm"):
        return False, "no /dev/kvm on this host"
    if not host.can_open("/dev/kvm"):
        return False, "/dev/kvm is not readable and writable by this user"
    loaded = host.kvm_modules()
    hardware = [name for name in loaded if name in _KVM_HARDWARE_MODULES]
    if hardware:
        return True, f"/dev/kvm is usable ({hardware[0]} loaded)"
    flags = host.cpu_flags() & {"vmx", "svm"}
    if flags:
        return True, f"/dev/kvm is usable (CPU has {sorted(flags)[0]})"
    backing = ", ".join(name for name in loaded if name != "kvm") or "an unknown module"
    return False, (
        f"/dev/kvm is backed by {backing}, not kvm_intel/kvm_amd, and the CPU has no vmx/svm: "
        "hardware virtualization is not available, so guests run under TCG"
    )


@attrs.frozen(repr=False)
class QemuProbe(Record):
    program: Path | None  # None: not found
    capabilities: QemuCapabilities | None  # None: not found, did not run, or was not run
    not_run: str | None = None  # why it was not run
    refused: str | None = None  # why it is not run even when asked to


def probe_qemu(host: Host, binary: str, *, asked_to_run: bool) -> QemuProbe:
    """Run `binary -help` only when that runs no one else's code: the program and every directory above
    it are root's and writable by no group or others. A user who asked to run qemu (`up`, preflight) may
    also run a qemu of their own; rendering an untrusted spec runs nothing from it."""
    from vmrun.host.access import untrusted_reason

    program = host.find_program(binary)
    if program is None:
        return QemuProbe(None, None)
    refused = untrusted_reason(host, program, owners=frozenset({0, host.current_user().uid}))
    not_run = refused if asked_to_run else untrusted_reason(host, program, owners=frozenset({0}))
    if not_run is not None:
        return QemuProbe(program, None, not_run=not_run, refused=refused)
    return QemuProbe(program, host.qemu_capabilities(program))


def gather_facts(host: Host, qemu_binary: str, *, asked_to_run: bool = False) -> HostFacts:
    """asked_to_run: the command runs qemu (`up`, preflight without --dry-run), so a qemu the user owns
    may run; render, export and dry runs only run a qemu root controls."""
    kvm_usable, kvm_reason = kvm_verdict(host)
    qemu = probe_qemu(host, qemu_binary, asked_to_run=asked_to_run)
    capabilities = qemu.capabilities
    return HostFacts(
        qemu_version=capabilities.version if capabilities else None,
        qemu_program=qemu.program,
        qemu_not_run=qemu.not_run,
        qemu_refused=qemu.refused,
        kvm_usable=kvm_usable,
        kvm_reason=kvm_reason,
        vhost_net=host.can_open("/dev/vhost-net"),
        drop_privileges=host.is_root_user(),
        privilege_drop=choose_privilege_drop(capabilities),
        seccomp=bool(capabilities and capabilities.has_sandbox),
    )
