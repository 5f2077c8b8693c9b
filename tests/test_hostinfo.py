"""`vmrun host iommu` / `host check` on fake host trees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vmrun.facts import QemuProbe
from vmrun.host import Host, QemuCapabilities
from vmrun.hostinfo import check_text, host_check, iommu_report, iommu_text

from .fakehost import FakePci, build_host_tree

NVME = FakePci("0000:01:00.0", group="12", driver="nvme")
BRIDGE = FakePci("0000:00:01.0", group="12", driver="pcieport", device_class="0x060400")
STUBBED = FakePci("0000:02:00.0", group="13", driver="vfio-pci")


def test_fake_sysfs_groups_list_devices_drivers_and_viability(tmp_path: Path) -> None:
    build_host_tree(tmp_path, [NVME, BRIDGE, STUBBED])
    groups = iommu_report(Host(root=tmp_path))
    assert [(group.group, group.viable) for group in groups] == [("12", False), ("13", True)]
    assert [(d.address, d.driver, d.device_class) for d in groups[0].devices] == [
        ("0000:00:01.0", "pcieport", "0x060400"), ("0000:01:00.0", "nvme", "0x010802"),
    ]
    assert groups[0].devices[1].vendor == "144d"
    # Only the NVMe function needs a [[vfio]] entry; the bridge stays with the host.
    assert groups[0].vfio_lines() == ["[[vfio]]", 'id = "dev12-0"', 'host = "0000:01:00.0"']


HOST_BRIDGE = FakePci("0000:00:00.0", group="0", driver=None, device_class="0x060000")
ISA_BRIDGE = FakePci("0000:00:1f.0", group="0", driver="lpc_ich", device_class="0x060100")
BOOT_VGA = FakePci("0000:00:02.0", group="1", driver="i915", device_class="0x030000", boot_vga=True)
SECOND_GPU = FakePci("0000:03:00.0", group="2", driver="amdgpu", device_class="0x030000")
GPU_AUDIO = FakePci("0000:03:00.1", group="2", driver="snd_hda_intel", device_class="0x040300")


def test_fake_sysfs_suggests_endpoints_only_never_bridges_or_the_boot_vga(tmp_path: Path) -> None:
    build_host_tree(tmp_path, [HOST_BRIDGE, ISA_BRIDGE, BOOT_VGA, SECOND_GPU, GPU_AUDIO])
    groups = iommu_report(Host(root=tmp_path))
    assert [group.vfio_lines() for group in groups] == [
        [],  # host bridge and ISA bridge: the host's plumbing
        [],  # the boot VGA
        ["[[vfio]]", 'id = "dev2-0"', 'host = "0000:03:00.0"', "[[vfio]]", 'id = "dev2-1"', 'host = "0000:03:00.1"'],
    ]
    assert [d.boot_vga for group in groups for d in group.devices] == [False, False, True, False, False]
    text = iommu_text(groups).splitlines()
    [vga_line] = [line for line in text if line.startswith("  0000:00:02.0")]
    assert vga_line.endswith("(boot VGA: the host's console; not passable)")
    assert [line for line in text if line.startswith("IOMMU group")] == [
        "IOMMU group 0: nothing in it to pass through",
        "IOMMU group 1: nothing in it to pass through",
        "IOMMU group 2: its devices must leave their host drivers (vmrun does that)",
    ]


def test_no_iommu_is_said_plainly(tmp_path: Path) -> None:
    assert iommu_text(iommu_report(Host(root=tmp_path))).startswith("The IOMMU is off")


def test_fake_ksm_savings(tmp_path: Path) -> None:
    build_host_tree(tmp_path, [], ksm_run="1")
    (tmp_path / "sys/kernel/mm/ksm/pages_shared").write_text("10\n")
    (tmp_path / "sys/kernel/mm/ksm/pages_sharing").write_text("256\n")
    assert Host(root=tmp_path).ksm_stats() == {
        "run": 1, "pages_shared": 10, "pages_sharing": 256, "bytes_saved": 256 * 4096,
    }


def test_cli_host_iommu_json_on_a_fake_tree(tmp_path: Path) -> None:
    build_host_tree(tmp_path, [NVME, BRIDGE])
    result = subprocess.run(
        [sys.executable, "-m", "vmrun.cli", "--host-root", str(tmp_path), "host", "iommu", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [group] = json.loads(result.stdout)
    assert group["group"] == "12" and group["viable"] is False and len(group["devices"]) == 2


def test_fake_host_check_says_why_qemu_was_not_asked(tmp_path: Path) -> None:
    build_host_tree(tmp_path, [])
    host = Host(root=tmp_path)
    not_run = QemuProbe(Path("/opt/q/qemu"), None, not_run="/opt/q is writable by others (mode 0777)")
    assert "\nqemu       not run: /opt/q is writable by others (mode 0777)" in check_text(host_check(host, not_run))
    asked = QemuProbe(Path("/usr/bin/qemu"), QemuCapabilities("9.0.0", has_run_with_user=False, has_runas=True,
                                                              has_sandbox=True))
    assert check_text(host_check(host, asked)).endswith(
        "qemu       9.0.0 (-run-with user=: False, -runas: True, -sandbox: True)")
