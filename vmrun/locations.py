"""Where vmrun keeps per-VM state on the host, by convention (root vs. a normal user)."""

from __future__ import annotations

import os
from pathlib import Path

import attrs


def default_run_root() -> Path:
    """Sockets, pidfile, console log: gone with the run (tmpfs)."""
    if os.geteuid() == 0:
        return Path("/run/vmrun")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/vmrun-{os.getuid()}"
    return Path(runtime) / "vmrun"


def default_state_root() -> Path:
    """What outlives a run, such as a UEFI guest's boot entries."""
    if os.geteuid() == 0:
        return Path("/var/lib/vmrun")
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "vmrun"


@attrs.frozen
class RunPaths:
    """Where one VM's sockets and files live: run_dir per run; state_dir outlives runs (UEFI vars)."""

    run_dir: Path
    state_dir: Path

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "qga.sock"

    @property
    def console_socket(self) -> Path:
        return self.run_dir / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def uefi_vars(self) -> Path:
        return self.state_dir / "OVMF_VARS.fd"

    @property
    def cloud_init_seed(self) -> Path:
        """The NoCloud seed `up` rebuilds from the spec's [cloud_init] files."""
        return self.state_dir / "seed.iso"


@attrs.frozen
class Places:
    """Where VMs live on this host; a VM's RunPaths derive from its name."""

    run_root: Path
    state_root: Path

    def of(self, name: str) -> RunPaths:
        return RunPaths(run_dir=self.run_root / name, state_dir=self.state_root / name)
