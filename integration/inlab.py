"""The lab (integration/lab/lab) seen from a test: vmrun and shell commands run on the L1 kernel.

The lab shares this host's /tmp, so a test's tmp_path is the same directory in the lab. Run directories
go under the lab's own tmpfs /run: qemu cannot create its sockets on the 9p /tmp.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "integration" / "lab" / "lab"
SPARE_NIC = "8086:10d3"  # the lab's spare e1000e functions, each alone in its IOMMU group
LAB_RUN_ROOT = "/run/vmrun-lab-test"


def guestless_toml(name: str, extra: str = "", *, accel: str = "tcg", cpus: int = 1, agent: bool = False) -> str:
    """A VM with an empty disk NAME.raw beside its spec: firmware finds nothing to boot and ignores ACPI."""
    return textwrap.dedent(f"""\
        name = "{name}"
        [machine]
        accel = "{accel}"
        cpus = {cpus}
        memory = "64M"
        [boot]
        disk = "empty"
        [[disks]]
        id = "empty"
        path = "{name}.raw"
        [agent]
        enabled = {"true" if agent else "false"}
        """) + textwrap.dedent(extra) + "\n"  # tests append tables to it


def lab_command(*args: str, timeout: float = 900, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@attrs.frozen
class Lab:
    """One test's view of the lab: its spec directory here (and there), its run root there."""

    spec_dir: Path
    run_root: str = LAB_RUN_ROOT

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path = REPO,
            ) -> subprocess.CompletedProcess[str]:
        """ARGV in the lab, in cwd (there as here)."""
        options = [f"--env={name}={value}" for name, value in (env or {}).items()]
        return lab_command("exec", *options, "--", *argv, timeout=timeout, cwd=cwd)

    def sh(self, script: str, timeout: float = 300) -> str:
        """A shell script in the lab that must succeed; its stdout."""
        done = self.run("/bin/sh", "-ec", script, timeout=timeout)
        assert done.returncode == 0, f"in the lab: {script}\n{done.stderr}"
        return done.stdout

    def vmrun(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600,
              ) -> subprocess.CompletedProcess[str]:
        # Crash points are honoured only with this interpreter option (vmrun.crashpoints).
        armed = ["-X", "vmrun-crash-points"] if env and "VMRUN_TEST_KILL_AT" in env else []
        return self.run(str(REPO / ".venv/bin/python"), *armed, "-m", "vmrun", "--run-dir", self.run_root,
                        "--state-dir", str(self.spec_dir / "state"), *args, env=env, timeout=timeout)

    def vmrun_json(self, *args: str) -> Any:
        done = self.vmrun(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def spec(self, text: str, name: str) -> Path:
        path = self.spec_dir / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        return path

    def pci(self) -> dict[str, dict[str, str]]:
        """Every PCI function as the L1 kernel has it: driver, driver_override, ids, class, group."""
        script = r"""
        for d in /sys/bus/pci/devices/*; do
          printf '%s\t%s\t%s\t%s:%s\t%s\t%s\n' "${d##*/}" "$(basename "$(readlink "$d/driver")" 2>/dev/null)" \
            "$(cat "$d/driver_override")" "$(cut -c3- "$d/vendor")" "$(cut -c3- "$d/device")" \
            "$(cat "$d/class")" "$(basename "$(readlink "$d/iommu_group")")"
        done"""
        found = {}
        for line in self.sh(script).splitlines():
            address, driver, override, ids, device_class, group = line.split("\t")
            found[address] = {"driver": driver, "override": override, "ids": ids, "class": device_class,
                              "group": group}
        return found

    def snapshot(self) -> str:
        """All a VM's `up` may change in the kernel (integration/lab/snapshot): equal snapshots, same kernel."""
        return self.sh(f"{LAB.parent / 'snapshot'} {self.run_root}")

    def spare_nics(self) -> list[str]:
        return sorted(address for address, device in self.pci().items() if device["ids"] == SPARE_NIC)

    def read(self, path: str) -> str:
        return self.sh(f"cat {shlex.quote(path)}").strip()


@pytest.fixture(scope="session")
def lab_session() -> Iterator[None]:
    """The lab, booted once for the session; stopped at the end only if this session booted it."""
    was_running = lab_command("status").returncode == 0
    booted = lab_command("up", timeout=1800)
    assert booted.returncode == 0, f"lab up failed:\n{booted.stderr}"
    yield
    if not was_running:
        lab_command("down")


@pytest.fixture
def lab(lab_session: None, tmp_path: Path) -> Iterator[Lab]:
    """A test in the lab; whatever VMs it leaves are taken down by vmrun there, and the test fails."""
    in_lab = Lab(spec_dir=tmp_path)
    yield in_lab
    left = in_lab.sh(f"ls -A {in_lab.run_root} 2>/dev/null | grep -vx .locks || true").split()
    if left:
        in_lab.vmrun("down", "--all", "--force")
    assert not left, f"test left VMs in the lab: {left}"
