"""vmrun on a real kernel: VFIO, vhost-net, KSM, KVM and every crash point, in the lab (integration/lab/lab).

The lab's L1 kernel has an emulated intel-iommu, spare e1000e functions alone in their IOMMU groups, the
ICH9 functions sharing one, a virtio-net uplink with the default route, and its root disk on virtio-scsi.
Every assertion about the host is read from that kernel: sysfs, /dev, /proc of the qemu vmrun started.
The VMs vmrun starts there boot nothing: qemu opening the devices as it realizes them is the proof.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .inlab import LAB_TIME, REPO, Lab, guestless_toml

KSM_RUN = "/sys/kernel/mm/ksm/run"
QUICK_DOWN = ("--timeout", "0.05")  # these VMs boot nothing, so they never answer an ACPI powerdown
MakeSpec = Callable[..., Path]


def bare_spec(lab: Lab, name: str, extra: str = "", *, accel: str = "tcg", cpus: int = 2, machine: str = "") -> Path:
    """A VM with an empty disk and no agent: qemu starts, realizes its devices and waits in the firmware."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(lab.spec_dir / f"{name}.raw"), "1M"], check=True)
    return lab.spec(guestless_toml(name, extra, accel=accel, cpus=cpus, machine=machine), name)


def vfio_spec(lab: Lab, name: str, device: str, *, tap: bool = True, ksm: bool = True, machine: str = "") -> Path:
    nic = '[[nics]]\nid = "n0"\nqueues = 2\nvhost = true\n' if tap else ""
    return bare_spec(lab, name, f'{nic}[[vfio]]\nid = "nic0"\nhost = "{device}"\n'
                                f'[host]\nksm = {"true" if ksm else "false"}\n', machine=machine)


def qemu_pid(lab: Lab, name: str) -> int:
    """The pid `status` gives, checked against the process: that VM's qemu, run from this run root."""
    [vm] = lab.vmrun_json("status", name)
    assert vm["state"] == "running", vm
    pid = int(vm["pid"])
    argv = lab.sh(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").splitlines()
    assert argv[0].endswith("qemu-system-x86_64"), argv
    assert any(arg.startswith(f"guest={name},process=vmrun-{name}") for arg in argv), argv
    assert any(arg.startswith(f"{lab.run_root}/{name}/") or f"={lab.run_root}/{name}/" in arg for arg in argv), argv
    return pid


def held_files(lab: Lab, pid: int) -> list[str]:
    """What the process holds open, as /proc/PID/fd shows it."""
    return lab.sh(f"ls -l /proc/{pid}/fd | sed 's/.*-> //'").split()


def ids(lab: Lab, pid: int) -> dict[str, list[str]]:
    """Real, effective, saved and file-system uid and gid, and the supplementary groups, of the process."""
    status = lab.sh(f"grep -E '^(Uid|Gid|Groups):' /proc/{pid}/status")
    return {line.split(":")[0]: line.split(":")[1].split() for line in status.splitlines()}


def test_lab_exec_keeps_streams_apart_runs_here_and_shares_tmp(lab: Lab) -> None:
    (lab.spec_dir / "from-host").write_text("sent\n")
    done = lab.run("/bin/sh", "-c", 'pwd; cat from-host; echo back > from-lab; echo err >&2; exit 7',
                   cwd=lab.spec_dir)
    assert (done.returncode, done.stdout, done.stderr) == (7, f"{lab.spec_dir}\nsent\n", "err\n")
    assert (lab.spec_dir / "from-lab").read_text() == "back\n"
    killed = lab.run("/bin/sh", "-c", "kill -KILL $$")
    assert killed.returncode == -9


def test_a_lab_exec_that_times_out_is_killed_in_the_lab(lab: Lab) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        lab.run("/bin/sh", "-c", "sleep 1234.5; echo still here", timeout=5)
    assert lab.sh("pgrep -f '^sleep 1234.5' || true").strip() == "", "the job goes on in the lab"


def test_host_check_and_iommu_report_match_the_kernel(lab: Lab) -> None:
    check = lab.vmrun_json("host", "check")
    kernel_groups = lab.sh("ls /sys/kernel/iommu_groups").split()
    assert check["iommu_groups"] == len(kernel_groups) > 0
    assert check["vhost_net"] is True and check["tun"] is True
    assert check["kvm"]["usable"] is (lab.sh("ls /dev/kvm 2>/dev/null; true").strip() == "/dev/kvm"), check["kvm"]

    report = lab.vmrun_json("host", "iommu")
    pci = lab.pci()
    shown = {device["address"]: (group["group"], device["driver"]) for group in report for device in group["devices"]}
    assert shown == {address: (device["group"], device["driver"] or None) for address, device in pci.items()}
    # The kernel's rule (VFIO_GROUP_GET_STATUS): viable when every member is unbound, on a VFIO driver, or a
    # PCI-to-PCI bridge (here the root ports, on pcieport).
    for group in report:
        expected = all(pci[device["address"]]["driver"] in ("", "vfio-pci", "pci-stub", "pcieport")
                       for device in group["devices"])
        assert group["viable"] is expected, group
    by_address = {device["address"]: group for group in report for device in group["devices"]}
    ich9 = by_address["0000:00:1f.0"]
    assert {device["address"] for device in ich9["devices"]} >= {"0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"}
    assert ich9["viable"] is False, "the LPC bridge at 00:1f.0 keeps the ICH9 group from being viable"
    assert "0000:00:1f.0" in ich9["refusal"], ich9


def test_suggested_lines_pass_preflight_and_a_dry_run_changes_nothing(lab: Lab) -> None:
    text = lab.vmrun("host", "iommu").stdout
    suggested = re.findall(r'host = "([0-9a-f:.]+)"', text)
    # Everything else the lab has is the host's own: its root disk, uplink, 9p shares, agent console, ICH9.
    assert sorted(suggested) == lab.spare_nics(), text
    before = lab.snapshot()
    for index, device in enumerate(suggested):
        spec = vfio_spec(lab, f"dry{index}", device)
        dry = lab.vmrun("preflight", "--dry-run", str(spec))
        assert dry.returncode == 0, f"{device}: {dry.stdout}{dry.stderr}"
    assert lab.snapshot() == before


def test_vfio_vhost_and_ksm_up_and_down_on_a_real_kernel(lab: Lab) -> None:
    device = lab.spare_nics()[0]
    group = lab.pci()[device]["group"]
    lab.sh(f"echo 0 > {KSM_RUN}")  # a reused lab may have it on: then "on" below would prove nothing
    spec = vfio_spec(lab, "pass", device)

    up = lab.vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    pid = qemu_pid(lab, "pass")
    assert lab.pci()[device]["driver"] == "vfio-pci"
    assert lab.pci()[device]["override"] == "vfio-pci"
    uid, gid = lab.sh("id -u vmrun; id -g vmrun").split()
    # Only qemu's user may open the group: owner and group vmrun's, no access for anyone else.
    assert lab.sh(f"stat -c '%u %g %a' /dev/vfio/{group}").split() == [uid, gid, "600"]
    dropped = ids(lab, pid)
    assert dropped["Uid"] == [uid] * 4 and dropped["Gid"] == [gid] * 4, f"qemu did not drop to vmrun: {dropped}"
    assert sorted(dropped["Groups"]) == sorted(lab.sh("id -G vmrun").split()), "qemu kept root's groups"
    assert lab.sh(f"awk '/^CapEff:/ {{print $2}}' /proc/{pid}/status").strip() == "0000000000000000"
    held = held_files(lab, pid)
    assert f"/dev/vfio/{group}" in held and "/dev/vfio/vfio" in held
    assert held.count("/dev/vhost-net") == 2, "one vhost-net per queue pair"
    memlock = lab.sh(f"awk '/Max locked memory/ {{print $4}}' /proc/{pid}/limits").strip()
    assert int(memlock) == (64 + 1024) * 2**20
    assert int(lab.read("/sys/class/net/pass.n0/tun_flags"), 16) & 0x100, "the tap is not multi_queue"
    assert lab.read(KSM_RUN) == "1"

    down = lab.vmrun("down", *QUICK_DOWN, "pass")
    assert down.returncode == 0, down.stderr
    assert lab.sh(f"test -d /proc/{pid} && echo alive || echo gone").strip() == "gone"
    assert lab.pci()[device]["driver"] == "e1000e"
    assert lab.pci()[device]["override"] == "(null)"
    assert lab.read(KSM_RUN) == "0"
    assert lab.sh("test -e /sys/class/net/pass.n0 && echo tap || echo none").strip() == "none"
    assert lab.sh(f"test -e {lab.run_root}/pass && echo dir || echo none").strip() == "none"


def refused(lab: Lab, spec: Path, *expected: str) -> str:
    """up refuses with exit 3 in its preflight, leaving the kernel as it was."""
    before = lab.snapshot()
    done = lab.vmrun("up", str(spec))
    assert done.returncode == 3, done.stderr
    for words in expected:
        assert words in done.stderr, f"{words!r} not in {done.stderr}"
    assert lab.snapshot() == before
    return done.stderr


def device_of(lab: Lab, script: str) -> str:
    """The PCI function a sysfs path below it leads to, e.g. a NIC's or a 9p device's."""
    path = lab.sh(f"readlink -f {script}").strip()
    return re.findall(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", path)[-1]


def test_a_function_sharing_its_group_is_refused_naming_the_others(lab: Lab) -> None:
    refused(lab, vfio_spec(lab, "shared", "00:1f.2", tap=False, ksm=False), "0000:00:1f.0")


def test_the_default_route_nic_is_refused(lab: Lab) -> None:
    uplink = lab.sh("ip -4 route show default | awk '{print $5}'").strip()
    device = device_of(lab, f"/sys/class/net/{uplink}/device")
    refused(lab, vfio_spec(lab, "route", device, tap=False, ksm=False), device, "default route")


def test_the_root_disk_controller_is_refused(lab: Lab) -> None:
    device = device_of(lab, "/sys/block/sda/device")
    refused(lab, vfio_spec(lab, "rootdisk", device, tap=False, ksm=False), device, "mounted")


def test_a_9p_device_backing_a_mount_is_refused(lab: Lab) -> None:
    tag_file = lab.sh("grep -l '^hosttmp$' /sys/bus/virtio/devices/*/mount_tag").strip()
    device = device_of(lab, tag_file.rsplit("/", 1)[0])
    refused(lab, vfio_spec(lab, "ninep", device, tap=False, ksm=False), device, "mounted")


def test_a_device_held_by_a_running_vm_is_refused_naming_it(lab: Lab) -> None:
    device = lab.spare_nics()[0]
    first = vfio_spec(lab, "holder", device, tap=False, ksm=False)
    before = lab.snapshot()
    assert lab.vmrun("up", str(first)).returncode == 0
    try:
        refused(lab, vfio_spec(lab, "thief", device, tap=False, ksm=False), "holder")
        assert lab.pci()[device]["driver"] == "vfio-pci"
    finally:
        assert lab.vmrun("down", *QUICK_DOWN, "holder").returncode == 0
    assert lab.snapshot() == before


def test_a_run_dir_where_sockets_cannot_be_made_is_refused_before_any_change(lab: Lab) -> None:
    spec = vfio_spec(lab, "nosock", lab.spare_nics()[0])
    on_9p = lab.with_run_root(str(lab.spec_dir / "run"))  # the lab's /tmp is 9p
    refused(on_9p, spec, "cannot create sockets", "9p")


# The crash points the lab spec's `up` and `down` pass (vmrun.crashpoints), as counted on this code: a point that
# disappears (or a new one) changes them, and then this count and the README's with it.
UP_POINTS = 29  # with "qemu started, its pidfile not yet written", inside the launch
DOWN_POINTS = 22


def test_killed_at_every_crash_point_of_up_and_down_then_down_force_restores_the_kernel(lab: Lab) -> None:
    spec = vfio_spec(lab, "crash", lab.spare_nics()[-1])
    started = time.monotonic()
    loop = lab.run(str(REPO / ".venv/bin/python"), "-X", "vmrun-crash-points", str(REPO / "integration/lab/crashloop"),
                   "--run-dir", lab.run_root, "--state-dir", str(lab.spec_dir / "state"), str(spec), "crash",
                   timeout=1800)
    LAB_TIME.add("crash loop", time.monotonic() - started)
    assert loop.returncode == 0, loop.stderr
    report = json.loads(loop.stdout)
    print(f"crash loop: {report['seconds']} s, up points {len(report['points']['up'])}, "
          f"down points {len(report['points']['down'])}")
    assert report["problems"] == []
    up_points, down_points = report["points"]["up"], report["points"]["down"]
    assert (len(up_points), len(down_points)) == (UP_POINTS, DOWN_POINTS), report["points"]
    # What up passes for this spec: the run dir, the tap, vfio-pci's binding (override, unbind, probe), the
    # chown of /dev/vfio/N, KSM, qemu's launch.
    for step in ("tuntap", "driver_override", "unbind", "drivers_probe", "/dev/vfio", "ksm", "qemu"):
        assert any(step in label for label in up_points), (step, up_points)
    assert any("stopping" in label for label in down_points), down_points
    # The dead ups the next up cleaned before it started the VM (crashloop's RECOVERED_BY_UP, each reached).
    assert report["recovered_by_up"] and set(report["recovered_by_up"]) <= set(up_points), report


def test_auto_picks_kvm_in_the_lab_and_qemu_runs_with_it(lab: Lab) -> None:
    if lab.sh("ls /dev/kvm 2>/dev/null; true").strip() != "/dev/kvm":
        # Said in the session's summary, not only as a skip: a lab without KVM leaves `accel = "auto"` unproven.
        why = ("L1 has no /dev/kvm: its CPU flags have " +
               (lab.sh("grep -m1 -ow -e vmx -e svm /proc/cpuinfo || echo 'no vmx/svm (no nested virtualization)'")
                .strip()) + "; kvm modules: " + (" ".join(lab.sh("lsmod | awk '/^kvm/ {print $1}'").split()) or "none"))
        LAB_TIME.notes.append(f"accel=auto untested: {why}")
        print(why)
        pytest.skip(why)
    spec = bare_spec(lab, "kvm", accel="auto", cpus=1)
    render = lab.vmrun("render", str(spec))
    assert render.returncode == 0, render.stderr
    assert "-accel kvm" in render.stdout and "-cpu host" in render.stdout, render.stdout
    up = lab.vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    try:
        [vm] = lab.vmrun_json("status", "kvm")
        assert vm["accel"] == "kvm" and vm["state"] == "running", vm
        assert "/dev/kvm" in held_files(lab, qemu_pid(lab, "kvm")), "qemu does not hold /dev/kvm open"
    finally:
        assert lab.vmrun("down", *QUICK_DOWN, "kvm").returncode == 0


def test_vhost_auto_turns_on_and_a_tap_joins_a_host_bridge(lab: Lab) -> None:
    lab.sh("ip link add labbr0 type bridge")
    try:
        spec = bare_spec(lab, "bridged", '[[nics]]\nid = "n0"\nqueues = 2\nbridge = "labbr0"\n')
        render = lab.vmrun("render", str(spec))
        assert "vhost=on" in render.stdout, render.stdout
        assert lab.vmrun("up", str(spec)).returncode == 0
        try:
            assert lab.sh("basename $(readlink /sys/class/net/bridged.n0/master)").strip() == "labbr0"
            pid = qemu_pid(lab, "bridged")
            assert held_files(lab, pid).count("/dev/vhost-net") == 2
        finally:
            assert lab.vmrun("down", *QUICK_DOWN, "bridged").returncode == 0
        assert lab.sh("test -e /sys/class/net/bridged.n0 && echo tap || echo none").strip() == "none"
    finally:
        lab.sh("ip link del labbr0")


def test_a_vfio_guest_on_huge_pages_bound_to_numa_node_1(lab: Lab) -> None:
    nodes = "/sys/devices/system/node"
    assert lab.sh(f"ls -d {nodes}/node[0-9]*").split() == [f"{nodes}/node0", f"{nodes}/node1"]
    pools = [f"{nodes}/node{node}/hugepages/hugepages-2048kB/nr_hugepages" for node in (0, 1)]
    lab.sh(f"echo 0 > {pools[1]}")  # a reused lab may keep pages there: then vmrun would reserve none
    node0_before = lab.read(pools[0])
    device = lab.spare_nics()[0]
    spec = vfio_spec(lab, "numa", device, tap=False, ksm=False, machine='hugepages = "2M"\nnuma_node = 1')
    up = lab.vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    try:
        pid = qemu_pid(lab, "numa")
        # 64M of guest RAM: 32 pages of 2 MiB reserved on node 1 alone, and all of them in qemu's RAM already,
        # as VFIO pins it at start (prealloc), bound to node 1.
        assert [lab.read(pools[0]), lab.read(pools[1])] == [node0_before, "32"]
        ram = [line for line in lab.sh(f"cat /proc/{pid}/numa_maps").splitlines() if "huge" in line]
        assert len(ram) == 1 and "bind:1" in ram[0].split() and "N1=32" in ram[0].split(), ram
        assert lab.pci()[device]["driver"] == "vfio-pci"
    finally:
        assert lab.vmrun("down", *QUICK_DOWN, "numa").returncode == 0
    assert [lab.read(pools[0]), lab.read(pools[1])] == [node0_before, "0"]
    assert lab.pci()[device]["driver"] == "e1000e"
