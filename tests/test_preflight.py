"""Preflight on fake host trees (this machine has no IOMMU, no /dev/vfio and no vhost-net)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from vmrun.errors import PreflightError
from vmrun.host import Host
from vmrun.load import parse_spec
from vmrun.preflight import Change, Others, Plan, Status, apply_plan, plan_preflight, undo_changes
from vmrun.render import HostFacts
from vmrun.spec import Firmware, Spec
from vmrun.units import MIB

from .common import REPO
from .fakehost import FakeKernelHost, FakePci, build_host_tree, snapshot

ROOT_FACTS = HostFacts(kvm_usable=False, kvm_reason="no KVM here", drop_privileges=True, qemu_version="7.2.0")
NVME = FakePci("0000:01:00.0", group="12", driver="nvme")
BRIDGE = FakePci("0000:00:01.0", group="12", driver="pcieport", device_class="0x060400")
GPU = FakePci("0000:03:00.0", group="15", driver="amdgpu", device_class="0x030000")
GPU_AUDIO = FakePci("0000:03:00.1", group="15", driver="snd_hda_intel", device_class="0x040300")
NATURAL = {"0000:01:00.0": "nvme", "0000:03:00.0": "amdgpu", "0000:03:00.1": "snd_hda_intel"}


def spec_with(*, vfio: list[str], ksm: bool = False, memory: str = "1G") -> Spec:
    data: dict[str, Any] = {
        "name": "fake", "machine": {"memory": memory}, "boot": {"kernel": str(REPO / "pyproject.toml")},
        "vfio": [{"id": f"dev{index}", "host": address} for index, address in enumerate(vfio)],
        "host": {"user": "nobody", "ksm": ksm},
    }
    return parse_spec(data, source="t", base=Path("/"))


def fake_host(tmp_path: Path, devices: list[FakePci], **options: Any) -> FakeKernelHost:
    build_host_tree(tmp_path, devices)
    return FakeKernelHost(root=tmp_path, natural_drivers=NATURAL, **options)


def plan_for(spec: Spec, host: Host) -> Plan:
    return plan_preflight(spec, host, ROOT_FACTS)


def driver_of(root: Path, address: str) -> str | None:
    link = root / "sys/bus/pci/devices" / address / "driver"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def test_fake_sysfs_viable_group_binds_exactly_the_function_and_chowns_its_group(tmp_path: Path) -> None:
    host = fake_host(tmp_path, [NVME, BRIDGE])
    plan = plan_for(spec_with(vfio=["01:00.0"]), host)
    assert plan.failures == ()
    assert [change.step.to_json() for change in plan.changes] == [
        {"action": "write", "path": "/sys/bus/pci/devices/0000:01:00.0/driver_override", "value": "vfio-pci"},
        {"action": "write", "path": "/sys/bus/pci/devices/0000:01:00.0/driver/unbind", "value": "0000:01:00.0"},
        {"action": "write", "path": "/sys/bus/pci/drivers_probe", "value": "0000:01:00.0"},
        {"action": "chown", "path": "/dev/vfio/12", "value": "nobody"},
    ]
    apply_plan(plan, host)
    assert driver_of(tmp_path, "0000:01:00.0") == "vfio-pci"
    assert driver_of(tmp_path, "0000:00:01.0") == "pcieport"  # the bridge is left alone
    assert (tmp_path / "dev/vfio/12").stat().st_uid == 65534
    # Exactly the paths the plan named were written, in its order.
    assert [path for path, _ in host.writes] == [c.step.path for c in plan.changes if c.step.action == "write"]


def test_fake_sysfs_down_rebinds_the_original_driver_and_restores_the_tree(tmp_path: Path) -> None:
    host = fake_host(tmp_path, [NVME, BRIDGE])
    before = snapshot(tmp_path)
    applied = apply_plan(plan_for(spec_with(vfio=["01:00.0"]), host), host)
    assert undo_changes(applied, host) == []
    assert driver_of(tmp_path, "0000:01:00.0") == "nvme"
    assert snapshot(tmp_path) == before


def test_fake_sysfs_group_with_a_foreign_host_driver_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    host = fake_host(tmp_path, [GPU, GPU_AUDIO])
    before = snapshot(tmp_path)
    plan = plan_for(spec_with(vfio=["03:00.0"]), host)
    [failure] = plan.failures
    assert failure.message.startswith("IOMMU group 15 also holds 0000:03:00.1 (driver snd_hda_intel)")
    with pytest.raises(PreflightError) as caught:
        apply_plan(plan, host)
    assert caught.value.lines() == [f"preflight: vfio dev0: {failure.message}"]
    assert snapshot(tmp_path) == before and host.writes == []


def test_fake_sysfs_listed_group_partner_is_bound_too(tmp_path: Path) -> None:
    host = fake_host(tmp_path, [GPU, GPU_AUDIO])
    apply_plan(plan_for(spec_with(vfio=["03:00.0", "03:00.1"]), host), host)
    assert driver_of(tmp_path, "0000:03:00.0") == driver_of(tmp_path, "0000:03:00.1") == "vfio-pci"


def test_fake_sysfs_failure_midway_rolls_everything_back(tmp_path: Path) -> None:
    host = fake_host(tmp_path, [GPU, GPU_AUDIO], fail_on="/sys/bus/pci/devices/0000:03:00.1/driver/unbind")
    before = snapshot(tmp_path)
    failed = "0000:03:00.1/driver/unbind failed: .*Device or resource busy"
    with pytest.raises(PreflightError, match=failed) as caught:
        apply_plan(plan_for(spec_with(vfio=["03:00.0", "03:00.1"]), host), host)
    assert caught.value.hint == "5 earlier change(s) rolled back"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda root: None, None),
        (lambda root: (root / "sys/devices/pci0000:00/0000:01:00.0/boot_vga").write_text("1\n"),
         "it is the boot VGA device (the host console)"),
        (lambda root: _block_device(root, mounted=True), "it backs /dev/nvme0n1, which has a mounted filesystem"),
        (lambda root: _default_route_nic(root), "it is enp1s0, which carries the host's default route"),
    ],
)
def test_fake_sysfs_refuses_devices_the_host_needs(tmp_path: Path, setup: Any, reason: str | None) -> None:
    host = fake_host(tmp_path, [NVME])
    setup(tmp_path)
    failures = plan_for(spec_with(vfio=["01:00.0"]), host).failures
    expected = [f"refusing to take 0000:01:00.0 from the host: {reason}"] if reason else []
    assert [failure.message for failure in failures] == expected


def _block_device(root: Path, *, mounted: bool) -> None:
    (root / "sys/devices/pci0000:00/0000:01:00.0/nvme/nvme0/nvme0n1").mkdir(parents=True)
    (root / "sys/block").mkdir(parents=True)
    (root / "sys/block/nvme0n1").symlink_to("../devices/pci0000:00/0000:01:00.0/nvme/nvme0/nvme0n1")
    if mounted:
        (root / "proc/mounts").write_text("/dev/nvme0n1p2 /srv ext4 rw 0 0\n")


def _default_route_nic(root: Path) -> None:
    (root / "sys/class/net/enp1s0").mkdir(parents=True)
    (root / "sys/class/net/enp1s0/device").symlink_to("../../../devices/pci0000:00/0000:01:00.0")
    (root / "proc/net/route").write_text("Iface\tDestination\tGateway\nenp1s0\t00000000\t0101A8C0\n")


def test_fake_sysfs_iommu_off_and_missing_device(tmp_path: Path) -> None:
    host = fake_host(tmp_path, [NVME])
    assert [f.message for f in plan_for(spec_with(vfio=["02:00.0"]), host).failures] == [
        "no PCI device 0000:02:00.0 on this host (lspci -D lists them)"
    ]
    empty = Host(root=tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    [failure] = plan_for(spec_with(vfio=["01:00.0"]), empty).failures
    assert failure.name == "iommu" and "intel_iommu=on" in failure.message


def test_fake_sysfs_memlock_covers_guest_ram_plus_a_gibibyte(tmp_path: Path) -> None:
    host = fake_host(tmp_path, [NVME])
    assert plan_for(spec_with(vfio=["01:00.0"], memory="8G"), host).memlock == (8 + 1) * 1024 * MIB
    assert plan_for(spec_with(vfio=[]), host).memlock is None


def test_fake_ksm_turns_on_and_is_restored_only_by_the_last_vm(tmp_path: Path) -> None:
    host = fake_host(tmp_path, [])
    run = tmp_path / "sys/kernel/mm/ksm/run"
    applied = apply_plan(plan_for(spec_with(vfio=[], ksm=True), host), host)
    assert run.read_text() == "1"
    undo_changes(applied, host, others=Others(want_ksm=True))
    assert run.read_text() == "1"
    undo_changes(applied, host)
    assert run.read_text() == "0"


def test_applied_changes_survive_the_state_file(tmp_path: Path) -> None:
    host = fake_host(tmp_path, [NVME])
    applied = apply_plan(plan_for(spec_with(vfio=["01:00.0"]), host), host)
    restored = [Change.from_json(json.loads(json.dumps(change.to_json()))) for change in applied]
    assert restored == list(applied)


def test_vhost_auto_warns_and_vhost_true_fails_without_dev_vhost_net(tmp_path: Path) -> None:
    host = fake_host(tmp_path, [])
    data = tomllib.loads('name = "n"\n[boot]\nkernel = "/etc/hostname"\n[[nics]]\nid = "a"\n[[nics]]\nid = "b"\n'
                        'vhost = true\n[host]\nuser = "nobody"\n')
    checks = plan_for(parse_spec(data, source="t", base=Path("/")), host).checks
    vhost = [(c.name, c.status) for c in checks if "vhost" in c.message]
    assert vhost == [("nics a", Status.WARN), ("nics b", Status.FAIL)]


def fake_kvm_tree(root: Path, modules: list[str], flags: str) -> Host:
    (root / "dev").mkdir(parents=True)
    (root / "dev/kvm").write_text("")
    for module in modules:
        (root / "sys/module" / module).mkdir(parents=True)
    (root / "proc").mkdir()
    (root / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    return Host(root=root)


def test_fake_host_like_this_machine_gets_tcg_with_the_reason(tmp_path: Path) -> None:
    usable, reason = fake_kvm_tree(tmp_path, ["kvm", "kvm_pvm"], "fpu sse2 hypervisor").kvm_verdict()
    assert not usable and "kvm_pvm" in reason and "TCG" in reason


def test_fake_host_with_kvm_intel_gets_kvm(tmp_path: Path) -> None:
    usable, reason = fake_kvm_tree(tmp_path, ["kvm", "kvm_intel"], "fpu vmx").kvm_verdict()
    assert usable and reason == "/dev/kvm is usable (kvm_intel loaded)"


def test_cli_dry_run_on_a_fake_tree_prints_host_paths_and_changes_nothing(tmp_path: Path) -> None:
    build_host_tree(tmp_path / "host", [NVME, BRIDGE])
    spec = tmp_path / "spec.toml"
    spec.write_text(f'name = "fake"\n[boot]\nkernel = "{REPO / "pyproject.toml"}"\n'
                    '[[vfio]]\nid = "nvme0"\nhost = "01:00.0"\n[host]\nuser = "nobody"\n')
    before = snapshot(tmp_path / "host")
    result = subprocess.run(
        [sys.executable, "-m", "vmrun.cli", "--host-root", str(tmp_path / "host"), "preflight", str(spec),
         "--dry-run", "--json"], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert {"action": "chown", "path": "/dev/vfio/12", "value": "nobody"} in plan["changes"]
    assert plan["changes"][0]["path"] == "/sys/bus/pci/devices/0000:01:00.0/driver_override"
    assert snapshot(tmp_path / "host") == before


def test_missing_qemu_is_a_failed_check_not_a_crash(tmp_path: Path) -> None:
    facts = HostFacts(kvm_usable=False, kvm_reason="x", qemu_version=None)
    [failure] = plan_preflight(spec_with(vfio=[]), fake_host(tmp_path, []), facts).failures
    assert failure.name == "qemu" and "apt-get install qemu-system-x86" in failure.message


def test_cli_up_without_qemu_exits_3_without_a_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(f'name = "noqemu"\n[boot]\nkernel = "{REPO / "pyproject.toml"}"\n'
                    '[qemu]\nbinary = "/nonexistent/qemu-system-x86_64"\n[agent]\nenabled = false\n')
    result = subprocess.run(
        [sys.executable, "-m", "vmrun.cli", "--run-dir", str(tmp_path / "run"), "up", str(spec)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "preflight: qemu: /nonexistent/qemu-system-x86_64 not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A directory other users can traverse (pytest's own tmp root is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="vmrun-test-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def test_share_qemus_user_cannot_reach_is_refused_naming_the_component(tmp_path: Path, reachable_tmp: Path) -> None:
    private = reachable_tmp / "private"
    share = private / "share"
    share.mkdir(parents=True)
    private.chmod(0o700)
    share.chmod(0o777)
    data = {"name": "s", "boot": {"kernel": "/etc/hostname"}, "host": {"user": "nobody"},
            "shares": [{"id": "data", "path": str(share), "tag": "data"}]}
    spec = parse_spec(data, source="t", base=Path("/"))
    [failure] = plan_preflight(spec, Host(root=tmp_path), ROOT_FACTS).failures
    assert failure.message == f"qemu runs as nobody, who cannot use {private} (mode 0o700)"
    private.chmod(0o755)
    assert plan_preflight(spec, Host(root=tmp_path), ROOT_FACTS).failures == ()


def test_uefi_without_ovmf_is_a_failed_check(tmp_path: Path) -> None:
    facts = attrs.evolve(ROOT_FACTS, ovmf_code=tmp_path / "OVMF_CODE_4M.fd")
    spec = attrs.evolve(spec_with(vfio=[]), boot=attrs.evolve(spec_with(vfio=[]).boot, firmware=Firmware.UEFI))
    [failure] = plan_preflight(spec, fake_host(tmp_path / "host", []), facts).failures
    assert failure.name == "firmware"
    assert failure.message.endswith("OVMF_VARS_4M.fd (Debian: apt-get install ovmf)")
