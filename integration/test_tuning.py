"""Huge pages, pinning and an iothread on this host (2 CPUs, a 2 MiB pool root can grow), with real qemu."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
import tomli_w

from vmrun.host.system import Host, parse_cpu_list
from vmrun.qemu.monitor import Monitor

from .conftest import REPO, Vmrun

TINY = REPO / "specs" / "tiny.toml"
IMAGES = REPO / "images" / "tiny"
POOL_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")

pytestmark = [
    pytest.mark.skipif(not (IMAGES / "vmlinuz").exists(),
                       reason="tiny guest not built: run integration/tiny-guest/build"),
    pytest.mark.skipif(not (POOL_2M / "nr_hugepages").exists(), reason="this kernel has no 2 MiB huge page pool"),
    pytest.mark.skipif(len(Host().cpus()[1]) < 2, reason="pinning two vCPUs apart needs two online host CPUs"),
]


def tuned_tiny(vmrun: Vmrun) -> Path:
    """The tiny guest, 2 vCPUs crossed over the host's CPUs 1 and 0, on 2 MiB pages; a user-mode NIC and its
    own data disk, so it shares no tap or image with another test's tiny guest."""
    data = tomllib.loads(TINY.read_text())
    data["name"] = "tuned"
    data["machine"] = {"cpus": 2, "memory": "256M", "hugepages": "2M", "vcpu_pin": [1, 0], "emulator_pin": [0],
                       "io_thread": True}
    data["boot"].update(kernel=str(IMAGES / "vmlinuz"), initrd=str(IMAGES / "initrd.gz"))
    data["disks"][0]["path"] = str(vmrun.spec_dir / "tuned-data.raw")
    data["nics"] = [{"id": "net0", "mode": "user", "restrict": True}]
    del data["shares"], data["kubevirt"]
    path = vmrun.spec_dir / "tuned.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def hugetlb_mapping_kb(pid: int) -> int:
    """The size of qemu's mapping that is backed by 2 MiB pages (guest RAM), from /proc/PID/smaps."""
    smaps = Path(f"/proc/{pid}/smaps").read_text()
    sizes = [int(size) for size, page in re.findall(r"^Size:\s+(\d+) kB\n(?:.*\n)*?KernelPageSize:\s+(\d+) kB",
                                                   smaps, re.MULTILINE) if page == "2048"]
    assert re.search(r"^(Private|Shared)_Hugetlb:\s+[1-9]\d* kB", smaps, re.MULTILINE), "no hugetlb page in use"
    return sum(sizes)


def affinities(pid: int) -> dict[str, set[str]]:
    """Each thread name's Cpus_allowed_list values."""
    found: dict[str, set[str]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        allowed = re.search(r"^Cpus_allowed_list:\s*(\S+)", (task / "status").read_text(), re.MULTILINE)
        assert allowed is not None
        found.setdefault("main" if task.name == str(pid) else name, set()).add(allowed.group(1))
    return found


def test_tuned_tiny_guest_runs_on_huge_pages_pinned_with_an_iothread_and_gives_the_pages_back(vmrun: Vmrun) -> None:
    spec = tuned_tiny(vmrun)
    pool_before = (POOL_2M / "nr_hugepages").read_text()
    up = vmrun("up", str(spec))
    try:
        assert up.returncode == 0, up.stderr
        assert re.search(r"^vmrun: pinned \d+ qemu threads \(vCPUs on host CPUs 1, 0; qemu's other threads on 0\), "
                         r"then started the guest$", up.stderr, re.MULTILINE), up.stderr
        pid = int((vmrun.run_root / "tuned" / "qemu.pid").read_text())
        assert hugetlb_mapping_kb(pid) == 256 * 1024
        threads = affinities(pid)
        vcpus = {name: cpus for name, cpus in threads.items() if name.startswith("CPU ")}
        assert sorted(vcpus) in (["CPU 0/KVM", "CPU 1/KVM"], ["CPU 0/TCG", "CPU 1/TCG"])
        assert [vcpus[name] for name in sorted(vcpus)] == [{"1"}, {"0"}]
        assert threads["main"] == {"0"}
        assert all(cpus == {"0"} for name, cpus in threads.items() if not name.startswith("CPU "))
        with Monitor(vmrun.run_root / "tuned" / "qmp.sock") as monitor:
            monitor.connect(timeout=10)
            iothreads = monitor.iothreads()
            assert monitor.status() == "running"
        assert list(iothreads) == ["io0"]
        assert parse_cpu_list(re.search(r"Cpus_allowed_list:\s*(\S+)", Path(
            f"/proc/{pid}/task/{iothreads['io0']}/status").read_text())[1]) == {0}  # type: ignore[index]
        assert vmrun("diff", str(spec)).returncode == 0
        vcpu1 = next(int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()
                     if (task / "comm").read_text().startswith("CPU 1/"))
        os.sched_setaffinity(vcpu1, {0, 1})  # someone moves it (taskset)
        moved = vmrun("diff", str(spec))
        assert moved.returncode == 6, moved.stderr
        assert "machine.vcpu_pin[1]: vCPU 1 runs on host CPUs 0-1, not 0" in moved.stdout + moved.stderr
    finally:
        down = vmrun("down", "tuned", "--timeout", "30")
        assert down.returncode == 0, down.stderr
    assert (POOL_2M / "nr_hugepages").read_text() == pool_before


@pytest.mark.parametrize("kill_at", ["before write", "after write", "before launching qemu", "after launching qemu"])
def test_up_killed_around_the_reservation_leaves_the_pool_as_it_was_after_down(vmrun: Vmrun, kill_at: str) -> None:
    spec = tuned_tiny(vmrun)
    pool_before = (POOL_2M / "nr_hugepages").read_text()
    killed = vmrun("up", str(spec), kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr
    down = vmrun("down", "tuned", "--timeout", "5", kill_at="before undoing write")  # killed in down too
    assert down.returncode == -9, down.stderr
    again = vmrun("down", "tuned", "--timeout", "5")
    assert again.returncode == 0, again.stderr
    assert (POOL_2M / "nr_hugepages").read_text() == pool_before
