"""What vmrun knows of the host, and the decisions taken from it (accelerator, vhost).

The host layer reads; this module decides. ``HostFacts`` is the value render, preflight and export
share, so none of them needs the others to know the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from vmrun.spec import Accel, Nic, Spec, Vhost

if TYPE_CHECKING:
    from vmrun.host import Host

_KVM_HARDWARE_MODULES = ("kvm_intel", "kvm_amd")


@attrs.frozen
class HostFacts:
    """What render needs to know of the host; gathered by the host layer, so render stays pure."""

    kvm_usable: bool
    kvm_reason: str
    vhost_net: bool = False
    drop_privileges: bool = False  # vmrun runs as root: qemu must not
    qemu_has_run_with: bool = False  # -run-with user= (QEMU >= 9.1) rather than -runas
    seccomp: bool = False
    ovmf_code: Path = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    qemu_version: str | None = None  # None: the qemu binary is missing or does not run

    @property
    def ovmf_vars_template(self) -> Path:
        """The pristine variable store shipped beside the firmware code; each VM gets a copy."""
        return self.ovmf_code.with_name(self.ovmf_code.name.replace("CODE", "VARS"))


@attrs.frozen
class AccelChoice:
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


def gather_facts(host: Host, qemu_binary: str) -> HostFacts:
    kvm_usable, kvm_reason = kvm_verdict(host)
    qemu = host.qemu_capabilities(qemu_binary)
    return HostFacts(
        qemu_version=qemu.version if qemu else None,
        kvm_usable=kvm_usable,
        kvm_reason=kvm_reason,
        vhost_net=host.can_open("/dev/vhost-net"),
        drop_privileges=host.is_root_user(),
        qemu_has_run_with=bool(qemu and qemu.has_run_with),
        seccomp=bool(qemu and qemu.has_sandbox),
    )
