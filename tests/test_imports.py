"""What `validate` and `render` load. Each module costs every run of them its import time: neither needs
what starts and watches VMs (the lifecycle, `sh`, `qemu.qmp`, asyncio) nor what only some specs or
other commands need (hashing for derived names, the seed's ISO and YAML, TOML writing, difflib)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmrun.spec.load import converter, load_spec
from vmrun.state.locations import Places
from vmrun.state.vmstate import VmState, create_run_dir

from .common import SPECS

# db.toml names its taps and MACs and has no cloud-init seed, so none of these has a reason to load.
NOT_LOADED = frozenset({
    "vmrun.run.lifecycle", "vmrun.preflight.plan", "vmrun.state.vmstate", "vmrun.qemu.process", "vmrun.run.fleet",
    "vmrun.qemu.monitor", "vmrun.guest.agent", "vmrun.state.drift", "qemu.qmp", "asyncio", "concurrent.futures",
    "hashlib", "pycdlib", "yaml", "tomli_w", "difflib", "uuid", "vmrun.run.imagecache", "rich", "urllib.request",
    "http.client", "sh",
})

# The command runs in a fresh interpreter, as from a shell; its output goes to a file so the module list
# is all that reaches stdout.
_RUN_AND_LIST = """\
import contextlib, sys
from vmrun.cli.main import main
with open(sys.argv[1], "w") as output, contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
    exit_code = main(sys.argv[2:])
print(exit_code, " ".join(sys.modules))
"""


def loaded_by(tmp_path: Path, *arguments: str) -> set[str]:
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST, str(tmp_path / "output"), "--run-dir", str(tmp_path), *arguments],
        capture_output=True, text=True, check=True, timeout=60, env=environment,
    )
    exit_code, *modules = result.stdout.split()
    assert exit_code == "0", (tmp_path / "output").read_text()
    return set(modules)


@pytest.mark.parametrize(
    "arguments",
    [["validate", str(SPECS / "db.toml")], ["render", str(SPECS / "db.toml")],
     ["render", "--json", str(SPECS / "db.toml")]],
    ids=["validate", "render", "render-json"],
)
def test_validate_and_render_load_nothing_they_do_not_need(tmp_path: Path, arguments: list[str]) -> None:
    assert loaded_by(tmp_path, *arguments) & NOT_LOADED == set()


def test_validate_and_render_of_a_url_base_load_no_downloader(tmp_path: Path) -> None:
    """The download (urllib, hashing, the progress bar) is `up`'s and `image pull`'s alone."""
    spec = tmp_path / "web.toml"
    spec.write_text('name = "web"\n[boot]\ndisk = "root"\n[[disks]]\nid = "root"\npath = "root.qcow2"\n'
                    'format = "qcow2"\nbase = "https://cloud.example/x.qcow2"\n'
                    f'base_digest = "sha256:{"0" * 64}"\n[agent]\nenabled = false\n')
    for command in ("validate", "render"):
        assert loaded_by(tmp_path, command, str(spec)) & NOT_LOADED == set()


# What `status` answers without: it reads state files as JSON and /proc, and asks no VM unless -a.
NOT_LOADED_BY_STATUS = NOT_LOADED - {"vmrun.qemu.process"} | {
    "attrs", "cattrs", "vmrun.spec.model", "vmrun.spec.load", "vmrun.host.system", "vmrun.preflight.changes",
    "vmrun.qemu.render", "vmrun.spec.check", "vmrun.guest.cloudinit", "vmrun.state.hostdrift",
}


def test_status_loads_neither_attrs_nor_the_spec_model_nor_qmp(tmp_path: Path) -> None:
    assert loaded_by(tmp_path, "status") & NOT_LOADED_BY_STATUS == set()


def test_status_of_a_running_vm_loads_neither_attrs_nor_the_spec_model_nor_qmp(tmp_path: Path) -> None:
    """A running VM is told from its state file and its pid; -a alone asks it (QMP and the agent). Its qemu is
    a stand-in process that carries the VM's name."""
    spec = load_spec(SPECS / "db.toml")
    paths = Places(run_root=tmp_path, state_root=tmp_path / "state").of(spec.name)
    create_run_dir(paths, VmState(name=spec.name, spec_path=str(SPECS / "db.toml"), argv=("qemu",), accel="tcg",
                                  accel_reason="test", spec=converter.unstructure(spec)))
    qemu = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "-name", f"guest={spec.name},process=vmrun-{spec.name}"])
    try:
        paths.pidfile.write_text(f"{qemu.pid}\n")
        loaded = loaded_by(tmp_path, "status")
        asked = loaded_by(tmp_path, "status", "-a")
    finally:
        qemu.kill()
        qemu.wait()
    assert loaded & NOT_LOADED_BY_STATUS == set()
    assert "qemu.qmp" in asked
    # -a asks, but still needs none of the spec's machinery: attrs' import alone was ~40 ms of its answer.
    assert asked & {"attrs", "cattrs", "vmrun.spec.model", "vmrun.spec.load"} == set()


def test_every_name_in_the_list_is_a_module() -> None:
    """A misspelt name is never loaded, and the test above could not fail for it."""
    code = f"import importlib, sys; [importlib.import_module(name) for name in {sorted(NOT_LOADED)!r}]"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
