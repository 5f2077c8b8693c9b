"""Where vmrun keeps things on this host by default, one rule for each: root's under /run, /var/lib and
/var/cache; a user's under the XDG directories. --run-dir, --state-dir and --cache-dir override them."""

from __future__ import annotations

import os
from pathlib import Path

ROOT_RUN_ROOT = Path("/run/vmrun")


def default_run_root() -> Path:
    """Sockets, pidfile, console log: gone with the run (tmpfs)."""
    if os.geteuid() == 0:
        return ROOT_RUN_ROOT
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/vmrun-{os.getuid()}"
    return Path(runtime) / "vmrun"


def default_state_root() -> Path:
    """What outlives a run, such as a UEFI guest's boot entries."""
    if os.geteuid() == 0:
        return Path("/var/lib/vmrun")
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "vmrun"


def default_cache_root() -> Path:
    """What saves work and can be fetched again (downloaded images, qemu's probed capabilities): shared by every
    VM of this user, or of root, kept until `vmrun image rm`."""
    if os.geteuid() == 0:
        return Path("/var/cache/vmrun")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmrun"


def default_image_cache() -> Path:
    return default_cache_root() / "images"
