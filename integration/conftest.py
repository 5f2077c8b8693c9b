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

from .inlab import lab, lab_session  # noqa: F401 - the lab's fixtures, for every integration test

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

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vmrun.cli", "--run-dir", str(self.run_root),
                "--state-dir", str(self.spec_dir / "state"), *args]

    def __call__(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None,
                 ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
            env={**os.environ, **(env or {})},
        )

    def spec(self, text: str, name: str = "spec.toml") -> Path:
        path = self.spec_dir / name
        path.write_text(textwrap.dedent(text))
        return path


@pytest.fixture
def vmrun(tmp_path: Path) -> Iterator[Vmrun]:
    cli = Vmrun(run_root=tmp_path / "run", spec_dir=tmp_path)
    yield cli
    leftovers = qemu_pids_of(cli.run_root)
    # Lock files stay by design: removing a lock file another vmrun may be opening would split the lock.
    run_dirs = sorted(path.name for path in cli.run_root.iterdir() if path.name != ".locks") \
        if cli.run_root.exists() else []
    if leftovers or run_dirs:
        # A failed test still must not leave taps, KSM or bindings behind: vmrun's own down undoes them.
        cli("down", "--all", "--force", timeout=120)
        for pid in qemu_pids_of(cli.run_root):
            subprocess.run(["kill", "-9", str(pid)], check=False)
    assert not leftovers, f"test left qemu running: {leftovers}"
    assert not run_dirs, f"test left run directories: {run_dirs}"


@pytest.fixture
def guestless_spec(vmrun: Vmrun) -> Callable[..., Path]:
    """A VM with an empty disk: firmware finds nothing to boot, and ignores ACPI powerdown."""

    def make(name: str = "bare", extra: str = "", *, agent: bool = False, cpus: int = 1) -> Path:
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(vmrun.spec_dir / f"{name}.raw"), "1M"],
                       check=True)
        return vmrun.spec(f"""\
            name = "{name}"
            [machine]
            accel = "tcg"
            cpus = {cpus}
            memory = "64M"
            [boot]
            disk = "empty"
            [[disks]]
            id = "empty"
            path = "{name}.raw"
            [agent]
            enabled = {"true" if agent else "false"}
            {extra}
            """, f"{name}.toml")

    return make
