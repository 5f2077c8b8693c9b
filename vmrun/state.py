"""A VM's run directory and its state file: what `down`, `status` and the next `up` need to know."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import attrs
import cattrs

from vmrun.load import converter
from vmrun.locations import RunPaths

STATE_FILE = "state.json"


@attrs.frozen
class VmState:
    """Written before qemu starts and after every host change, so a crash leaves enough to clean up."""

    name: str
    spec_path: str
    argv: tuple[str, ...]
    accel: str
    accel_reason: str
    started_at: float = attrs.field(factory=time.time)
    # Host changes preflight applied, as AppliedChange JSON, undone in reverse by `down`.
    changes: tuple[dict[str, Any], ...] = ()
    writable_disks: tuple[str, ...] = ()
    wants_ksm: bool = False

    def to_json(self) -> str:
        return json.dumps(converter.unstructure(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> VmState:
        return converter.structure(json.loads(text), cls)


def state_path(paths: RunPaths) -> Path:
    return paths.run_dir / STATE_FILE


def write_state(paths: RunPaths, state: VmState) -> None:
    """Atomically: a reader sees the old state or the new one, never half of it."""
    target = state_path(paths)
    temporary = target.with_name(f".{STATE_FILE}.{os.getpid()}")
    temporary.write_text(state.to_json())
    os.replace(temporary, target)


def read_state(paths: RunPaths) -> VmState | None:
    try:
        return VmState.from_json(state_path(paths).read_text())
    except (OSError, ValueError, TypeError, cattrs.BaseValidationError):
        return None


def create_run_dir(paths: RunPaths) -> None:
    paths.run_dir.parent.mkdir(parents=True, exist_ok=True)
    paths.run_dir.mkdir(mode=0o700)
    os.chmod(paths.run_dir, 0o700)  # mkdir's mode is filtered by the umask


def remove_run_dir(paths: RunPaths) -> None:
    shutil.rmtree(paths.run_dir, ignore_errors=True)


def vm_names(run_root: Path) -> list[str]:
    """Every VM with a run directory, running or left behind."""
    try:
        return sorted(entry.name for entry in run_root.iterdir() if (entry / STATE_FILE).exists())
    except OSError:
        return []
