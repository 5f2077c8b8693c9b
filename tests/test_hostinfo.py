"""`vmrun host iommu` / `host check` on fake host trees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vmrun.host.facts import QemuProbe
from vmrun.host.system import Host, QemuCapabilities
from vmrun.preflight.report import host_report, iommu_report, iommu_text, qemu_user_line, report_text

from .fakehost import FakePci, build_host_tree, put

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
BOOT_VGA = FakePci("0000:00:02.0", group="1", driver="i915", device_class="0x030000", boot_vga=True)
SECOND_GPU = FakePci("0000:03:00.0", group="2", driver="amdgpu", device_class="0x030000")
GPU_AUDIO = FakePci("0000:03:00.1", group="2", driver="snd_hda_intel", device_class="0x040300")
# AMD's dummy host bridge shares the GPU's group: no driver holds it, so the kernel lets the GPU go.
DUMMY_HOST_BRIDGE = FakePci("0000:00:03.0", group="2", driver=None, device_class="0x060000")
GPP_BRIDGE = FakePci("0000:00:03.1", group="2", driver="pcieport", device_class="0x060400")


def test_fake_sysfs_suggests_endpoints_only_never_bridges_or_the_boot_vga(tmp_path: Path) -> None:
    build_host_tree(tmp_path, [HOST_BRIDGE, BOOT_VGA, DUMMY_HOST_BRIDGE, GPP_BRIDGE, SECOND_GPU, GPU_AUDIO])
    groups = iommu_report(Host(root=tmp_path))
    assert [group.vfio_lines() for group in groups] == [
        [],  # the host bridge
        [],  # the boot VGA
        ["[[vfio]]", 'id = "dev2-0"', 'host = "0000:03:00.0"', "[[vfio]]", 'id = "dev2-1"', 'host = "0000:03:00.1"'],
    ]
    assert [(d.address, d.bridge, d.passable) for d in groups[2].devices] == [
        ("0000:00:03.0", None, False), ("0000:00:03.1", "PCI-to-PCI bridge", False),
        ("0000:03:00.0", None, True), ("0000:03:00.1", None, True),
    ]
    text = iommu_text(groups).splitlines()
    [vga_line] = [line for line in text if line.startswith("  0000:00:02.0")]
    assert vga_line.endswith("(stays with the host: it is the boot VGA device (the host console))")
    assert [line for line in text if line.startswith("IOMMU group")] == [
        "IOMMU group 0: nothing in it to pass through",
        "IOMMU group 1 cannot be passed through: 0000:00:02.0 (driver i915) stays with the host: it is the boot "
        "VGA device (the host console)",
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
        [sys.executable, "-m", "vmrun", "--host-root", str(tmp_path), "host", "iommu", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [group] = json.loads(result.stdout)
    assert group["group"] == "12" and group["viable"] is False and len(group["devices"]) == 2


def test_fake_host_check_says_why_qemu_was_not_asked(tmp_path: Path) -> None:
    build_host_tree(tmp_path, [])
    host = Host(root=tmp_path)
    not_run = QemuProbe(Path("/opt/q/qemu"), None, not_run="/opt/q is writable by others (mode 0777)")
    assert "\nqemu       not run: /opt/q is writable by others (mode 0777)" in report_text(host_report(host, not_run))
    asked = QemuProbe(Path("/usr/bin/qemu"), QemuCapabilities("9.0.0", has_run_with_user=False, has_runas=True,
                                                              has_sandbox=True))
    assert "\nqemu       9.0.0 (-run-with user=: False, -runas: True, -sandbox: True)\n" in report_text(
        host_report(host, asked))


def test_host_check_says_who_qemu_runs_as_and_what_keeps_it_root() -> None:
    keep_root = 'host.user = "root" keeps it root only with host.allow_root = true'
    runas = QemuCapabilities("7.2.0", has_run_with_user=False, has_runas=True, has_sandbox=True)
    neither = QemuCapabilities("10.0.0", has_run_with_user=False, has_runas=False, has_sandbox=True)
    assert qemu_user_line(vmrun_is_root=True, capabilities=runas) == (
        f"qemu leaves root for host.user with -runas; {keep_root}")
    assert qemu_user_line(vmrun_is_root=True, capabilities=None) == (
        f"qemu leaves root for host.user with -runas (assumed: qemu was not asked); {keep_root}")
    assert qemu_user_line(vmrun_is_root=True, capabilities=neither) == (
        f"this qemu has neither -run-with user= nor -runas: up refuses to start it as root unless {keep_root}")
    assert qemu_user_line(vmrun_is_root=False, capabilities=runas) == (
        "vmrun is not root: qemu runs as the user who runs vmrun")


def test_fake_host_with_two_numa_nodes_reports_cpus_nodes_and_each_huge_page_pool(tmp_path: Path) -> None:
    build_host_tree(tmp_path, [])
    put(tmp_path, "/sys/devices/system/cpu/present", "0-7\n")
    put(tmp_path, "/sys/devices/system/cpu/online", "0-5\n")
    put(tmp_path, "/sys/devices/system/node/possible", "0-1\n")
    put(tmp_path, "/sys/devices/system/node/online", "0-1\n")
    for where, total, free in (("/sys/kernel/mm/hugepages", 512, 100), ("/sys/devices/system/node/node0/hugepages",
                                                                        512, 100)):
        put(tmp_path, f"{where}/hugepages-2048kB/nr_hugepages", f"{total}\n")
        put(tmp_path, f"{where}/hugepages-2048kB/free_hugepages", f"{free}\n")
    put(tmp_path, "/sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages", "4\n")
    put(tmp_path, "/sys/devices/system/node/node1/hugepages/hugepages-1048576kB/free_hugepages", "4\n")
    report = host_report(Host(root=tmp_path), QemuProbe(Path("/usr/bin/qemu"), None))
    assert (report["cpus"], report["numa_nodes"]) == (
        {"present": list(range(8)), "online": list(range(6))}, {"present": [0, 1], "online": [0, 1]})
    assert report["hugepages"] == [
        {"size": "2M", "node": None, "total": 512, "free": 100},
        {"size": "2M", "node": 0, "total": 512, "free": 100},
        {"size": "1G", "node": 1, "total": 4, "free": 4},
    ]
    text = report_text(report)
    assert "\ncpus       0-5 online, 6-7 offline\nnuma       0-1 online\n" in text
    assert "\nhugepages  2M 100/512 free; 2M node 0 100/512 free; 1G node 1 4/4 free\n" in text
