"""The direction of imports: the host layer and the state files never load render, and the pure
render stage never loads the host layer (or the trust policy that reads through it)."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(*modules: str) -> set[str]:
    code = f"import sys, {', '.join(modules)}; print(' '.join(m for m in sys.modules if m.startswith('vmrun')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(result.stdout.split())


def test_host_vfio_and_state_do_not_load_render() -> None:
    assert "vmrun.qemu.render" not in loaded_after("vmrun.host.system", "vmrun.preflight.vfio", "vmrun.state.vmstate")


def test_render_does_not_load_the_host_layer() -> None:
    assert loaded_after("vmrun.qemu.render").isdisjoint({"vmrun.host.system", "vmrun.host.access"})
