"""Real qemu (TCG here) driven through the vmrun command line; every test leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

# The lab's fixtures and the hooks that boot it in the background and stop it early, for every integration test.
from .inlab import (  # noqa: F401
    guestless_toml,
    lab,
    lab_session,
    pytest_collection_finish,
    pytest_runtest_teardown,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

REPO = Path(__file__).resolve().parent.parent


def qemu_pids_of(run_root: Path) -> list[int]:
    """qemu processes whose command line points into this test's run directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"process=vmrun-" in cmdline and str(run_root).encode() in cmdline:
                found.append(int(proc.name))
    return found


@attrs.frozen
class Vmrun:
    """The vmrun CLI bound to one test's private run directory."""

    run_root: Path
    spec_dir: Path
    enter: tuple[str, ...] = ()  # a command vmrun runs under, such as nsenter into a private namespace

    def argv(self, *args: str, crash_points: bool = False) -> list[str]:
        armed = ["-X", "vmrun-crash-points"] if crash_points else []
        return [*self.enter, sys.executable, *armed, "-m", "vmrun", "--run-dir", str(self.run_root),
                "--state-dir", str(self.state_root), *args]

    @property
    def state_root(self) -> Path:
        return self.spec_dir / "state"

    def __call__(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None,
                 kill_at: str | None = None, kill_with: str = "KILL") -> subprocess.CompletedProcess[str]:
        """kill_at: the crash points (vmrun.crashpoints) at which vmrun sends itself kill_with."""
        crash = {"VMRUN_TEST_KILL_AT": kill_at, "VMRUN_TEST_KILL_SIGNAL": kill_with} if kill_at else {}
        return subprocess.run(
            self.argv(*args, crash_points=kill_at is not None), capture_output=True, text=True, timeout=timeout,
            # PYTHONPATH: a command entered into another namespace starts elsewhere than cwd, and would import
            # the vmrun the venv was installed from instead of this tree's.
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {}), **crash},
        )

    def spec(self, text: str, name: str = "spec.toml") -> Path:
        path = self.spec_dir / name
        path.write_text(textwrap.dedent(text))
        return path

    def leftovers(self, bindings_before: dict[str, str]) -> list[str]:
        """What this test's VMs still hold: qemu, run directories, taps and PCI bindings their specs name."""
        # Lock files stay by design: removing a lock file another vmrun may be opening would split the lock.
        run_dirs = sorted(path.name for path in self.run_root.iterdir() if path.name != ".locks") \
            if self.run_root.exists() else []
        taps, devices = self.named_on_the_host()
        bindings = pci_bindings(devices)
        return [
            *(f"qemu pid {pid}" for pid in qemu_pids_of(self.run_root)),
            *(f"run directory {name}" for name in run_dirs),
            *(f"tap {tap}" for tap in taps if (NET / tap).exists()),
            *(f"PCI device {device} bound as {bindings.get(device)}, was {bindings_before.get(device)}"
              for device in devices if bindings.get(device) != bindings_before.get(device)),
        ]

    def named_on_the_host(self) -> tuple[list[str], list[str]]:
        """The taps and PCI devices this test's specs name."""
        from vmrun.errors import VmrunError
        from vmrun.spec.load import load_spec
        from vmrun.spec.naming import pci_address
        from vmrun.spec.usernet import tap_nics

        taps, devices = [], []
        for path in self.spec_dir.glob("*.toml"):
            try:
                spec = load_spec(path)
            except VmrunError:
                continue
            taps += [nic.host_tap for nic in tap_nics(spec)]
            devices += [address for vfio in spec.vfio if (address := pci_address(vfio.host))]
        return taps, devices


NET = Path("/sys/class/net")
PCI = Path("/sys/bus/pci/devices")


def pci_bindings(devices: list[str] | None = None) -> dict[str, str]:
    """Each PCI device's driver and driver_override."""
    names = devices if devices is not None else [path.name for path in PCI.iterdir()] if PCI.exists() else []
    found = {}
    for name in names:
        if not (PCI / name).exists():
            continue
        driver = PCI / name / "driver"
        override = PCI / name / "driver_override"
        found[name] = (f"driver {driver.resolve().name if driver.exists() else None}, "
                       f"override {override.read_text().strip() if override.exists() else None}")
    return found


@pytest.fixture
def vmrun(tmp_path: Path) -> Iterator[Vmrun]:
    """Fails a test that leaves a qemu, a run directory, a tap or a PCI binding of its VMs behind, after
    taking them down with vmrun itself, so that a failed test leaks nothing either."""
    cli = Vmrun(run_root=tmp_path / "run", spec_dir=tmp_path)
    bindings = pci_bindings()
    yield cli
    left = cli.leftovers(bindings)
    if left:
        cli("down", "--all", "--force", timeout=120)
        for pid in qemu_pids_of(cli.run_root):
            subprocess.run(["kill", "-9", str(pid)], check=False)
    assert not left, f"test left behind: {left}"


@pytest.fixture
def guestless_spec(vmrun: Vmrun) -> Callable[..., Path]:
    """A VM with an empty disk: firmware finds nothing to boot, and ignores ACPI powerdown."""

    def make(name: str = "bare", extra: str = "", *, agent: bool = False, cpus: int = 1) -> Path:
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(vmrun.spec_dir / f"{name}.raw"), "1M"],
                       check=True)
        return vmrun.spec(guestless_toml(name, extra, cpus=cpus, agent=agent), f"{name}.toml")

    return make
