"""vmrun runs a qemu binary, even for -help, only when no one but root controls it, or when the user
asked to run qemu (up, preflight) and it is theirs. The stand-in qemu leaves a marker when run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from vmrun.host.access import untrusted_reason
from vmrun.host.facts import QemuProbe, gather_facts, probe_qemu
from vmrun.host.system import Host, QemuCapabilities, User
from vmrun.preflight.plan import inspect_qemu
from vmrun.spec.model import Spec

from .common import REPO
from .qemu_help import HELP_7_2, HELP_8_2, HELP_9_0, HELP_9_1, HELP_10_0, RUNAS

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
STRANGER = 4242
ROOT = frozenset({0})
ME = frozenset({0, os.geteuid()})


def fake_qemu(directory: Path, marker: Path) -> Path:
    """A qemu that answers -help like QEMU 7.2 and leaves marker behind: proof that it ran."""
    program = directory / "qemu"
    program.write_text(f'#!/bin/sh\ntouch "{marker}"\necho "QEMU emulator version 99.0.0"\n'
                       'echo "-runas user     change to user id user just before starting the VM"\n')
    program.chmod(0o755)
    return program


def open_dir(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o777)  # anyone may swap what is inside
    return path


@attrs.frozen
class HostOfStranger(Host):
    """This machine, with vmrun invoked by uid 4242 (qemu's owner in these tests)."""

    def current_user(self) -> User:
        return User("stranger", STRANGER, STRANGER)


@pytest.fixture
def root_only_dir() -> Iterator[Path]:
    """A directory that root alone controls, up to /: tmp_path lies under /tmp, which anyone can write."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    path = Path(tempfile.mkdtemp(prefix="vmrun-test-trust-", dir="/run"))
    yield path
    shutil.rmtree(path)


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes write the capability cache: not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def vmrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmrun", *args], capture_output=True, text=True, timeout=60)


def spec_running(tmp_path: Path, qemu: Path) -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text(f'name = "trust"\n[boot]\nkernel = "{REPO / "pyproject.toml"}"\n'
                    f'[qemu]\nbinary = "{qemu}"\n[agent]\nenabled = false\n')
    return spec


# --- the judgement, on real files -----------------------------------------------------------------


def test_the_installed_qemu_is_trusted() -> None:
    program = Host.find_program("qemu-system-x86_64")
    assert program is not None and untrusted_reason(Host(), program, owners=ROOT) is None


def test_a_world_writable_directory_above_qemu_is_named(tmp_path: Path) -> None:
    directory = open_dir(tmp_path.resolve() / "open")
    program = fake_qemu(directory, tmp_path / "ran")
    assert untrusted_reason(Host(), program, owners=ME) == f"{directory} is writable by others (mode 0777)"


def test_a_group_writable_qemu_is_named(tmp_path: Path) -> None:
    program = fake_qemu(tmp_path.resolve(), tmp_path / "ran")
    program.chmod(0o775)
    assert untrusted_reason(Host(), program, owners=ME) == f"{program} is writable by its group (mode 0775)"


@needs_root
def test_a_qemu_another_user_owns_is_named(tmp_path: Path) -> None:
    program = fake_qemu(tmp_path.resolve(), tmp_path / "ran")
    os.chown(program, STRANGER, STRANGER)
    assert untrusted_reason(Host(), program, owners=ROOT) == f"{program} is owned by uid {STRANGER}"


def test_links_are_judged_by_where_they_lead(tmp_path: Path) -> None:
    directory = open_dir(tmp_path.resolve() / "open")
    target = fake_qemu(directory, tmp_path / "ran")
    (tmp_path / "qemu-link").symlink_to(target)
    program = Host.find_program(str(tmp_path / "qemu-link"))
    assert program == target
    assert untrusted_reason(Host(), program, owners=ME) == f"{directory} is writable by others (mode 0777)"
    # A link anyone could swap, to the installed qemu: vmrun runs what it leads to now, which root controls.
    installed = Host.find_program("qemu-system-x86_64")
    assert installed is not None
    (directory / "to-installed").symlink_to(installed)
    assert Host.find_program(str(directory / "to-installed")) == installed


# --- the commands ----------------------------------------------------------------------------------


@needs_root  # as root, the nearest offender is the open directory, not the program
def test_render_export_and_dry_run_never_run_an_untrusted_qemu(tmp_path: Path) -> None:
    directory = open_dir(tmp_path.resolve() / "open")
    marker = tmp_path / "ran"
    qemu = fake_qemu(directory, marker)
    spec = spec_running(tmp_path, qemu)
    reason = f"{directory} is writable by others (mode 0777)"

    render = vmrun("--run-dir", str(tmp_path / "run"), "render", str(spec))
    assert render.returncode == 0, render.stderr
    assert render.stderr.splitlines()[0] == (
        f"vmrun: not probing qemu.binary {qemu}: {reason}; rendering with default capabilities (-runas, no -sandbox)"
    )
    assert render.stdout.startswith(f"{qemu} ")
    export = vmrun("export", str(spec), "--format", "libvirt")
    assert export.returncode == 0 and f"not probing qemu.binary {qemu}: {reason}; exporting" in export.stderr
    dry_run = vmrun("--run-dir", str(tmp_path / "run"), "preflight", str(spec), "--dry-run")
    assert f"refusing to run {qemu}: {reason}" in dry_run.stdout
    assert not marker.exists()

    Host().qemu_capabilities(qemu, cache_dir=tmp_path / "cache")
    assert marker.exists()  # the stand-in does leave its marker when it runs


@needs_root
def test_up_and_preflight_refuse_an_untrusted_qemu_with_exit_3(tmp_path: Path) -> None:
    directory = open_dir(tmp_path.resolve() / "open")
    marker = tmp_path / "ran"
    qemu = fake_qemu(directory, marker)
    spec = spec_running(tmp_path, qemu)
    refusal = (f"vmrun: error: preflight: qemu: refusing to run {qemu}: {directory} is writable by others "
               "(mode 0777); qemu must be root's (or yours), in directories that only root (or you) can write")
    for command in ("preflight", "up"):
        result = vmrun("--run-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"), command, str(spec))
        assert result.returncode == 3, result.stderr
        assert refusal in result.stderr.splitlines()
        assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / "trust").exists()


def test_a_trusted_qemu_is_asked_what_it_supports(root_only_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    qemu = fake_qemu(root_only_dir, marker)
    result = vmrun("--run-dir", str(tmp_path / "run"), "render", str(spec_running(tmp_path, qemu)))
    assert result.returncode == 0 and "not probing" not in result.stderr
    assert marker.exists()


def test_a_qemu_of_another_user_runs_only_for_that_user_and_only_when_asked(root_only_dir: Path,
                                                                               tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    qemu = fake_qemu(root_only_dir, marker)
    os.chown(qemu, STRANGER, STRANGER)
    owned = f"{qemu} is owned by uid {STRANGER}"

    # root rendering it, or asked to run it: not run
    assert probe_qemu(Host(), str(qemu), asked_to_run=False) == QemuProbe(qemu, None, not_run=owned, refused=owned)
    assert probe_qemu(Host(), str(qemu), asked_to_run=True) == QemuProbe(qemu, None, not_run=owned, refused=owned)
    rendered = vmrun("--run-dir", str(tmp_path / "run"), "render", str(spec_running(tmp_path, qemu)))
    assert rendered.returncode == 0 and f"not probing qemu.binary {qemu}: {owned};" in rendered.stderr
    # its owner, in a dry run: not run, and preflight says it will be
    spec = Spec(name="trust")
    facts = gather_facts(HostOfStranger(), str(qemu))
    assert (facts.qemu_not_run, facts.qemu_refused) == (owned, None)
    [check] = inspect_qemu(spec, facts)
    assert check.message == f"qemu-system-x86_64 not run by a dry run: {owned}; preflight and up run it, as it is yours"
    assert not marker.exists()
    # its owner, asking to run it (up, preflight): run
    assert probe_qemu(HostOfStranger(), str(qemu), asked_to_run=True) == QemuProbe(
        qemu, QemuCapabilities("99.0.0", has_run_with_user=False, has_runas=True, has_sandbox=False)
    )
    assert marker.exists()


# --- end to end: a trusted stand-in qemu answering -help as each release does ------------------------

HELP_WITHOUT_A_PRIVILEGE_DROP = HELP_9_0.replace(RUNAS, "")  # a build with -run-with but neither user= nor -runas


def qemu_answering(directory: Path, help_text: str) -> Path:
    (directory / "help.txt").write_text(help_text)
    program = directory / "qemu"
    program.write_text(f'#!/bin/sh\ncat "{directory / "help.txt"}"\n')
    program.chmod(0o755)
    return program


@pytest.mark.parametrize(("help_text", "expected"), [
    (HELP_7_2, ["-runas", "vmrun"]),
    (HELP_8_2, ["-runas", "vmrun"]),
    (HELP_9_0, ["-runas", "vmrun"]),
    (HELP_9_1, ["-run-with", "user=vmrun"]),
    (HELP_10_0, ["-run-with", "user=vmrun"]),
], ids=["7.2", "8.2", "9.0", "9.1", "10.0"])
def test_render_as_root_drops_privileges_the_way_the_probed_qemu_offers(
    root_only_dir: Path, tmp_path: Path, help_text: str, expected: list[str]
) -> None:
    qemu = qemu_answering(root_only_dir, help_text)
    result = vmrun("--run-dir", str(tmp_path / "run"), "render", str(spec_running(tmp_path, qemu)), "--json")
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)
    assert [arg for i, arg in enumerate(argv) if arg in ("-runas", "-run-with") or argv[i - 1] in
            ("-runas", "-run-with")] == expected


def test_a_qemu_that_cannot_drop_root_is_a_preflight_failure_not_an_argv(root_only_dir: Path,
                                                                           tmp_path: Path) -> None:
    qemu = qemu_answering(root_only_dir, HELP_WITHOUT_A_PRIVILEGE_DROP)
    spec = spec_running(tmp_path, qemu)
    rendered = vmrun("--run-dir", str(tmp_path / "run"), "render", str(spec), "--json")
    assert f"vmrun: warning: {qemu} has neither -run-with user= nor -runas: up refuses to start it as root" in (
        rendered.stderr.splitlines())
    assert "-runas" not in json.loads(rendered.stdout) and "-run-with" not in json.loads(rendered.stdout)
    refused = vmrun("--run-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"), "up", str(spec))
    assert refused.returncode == 3
    assert (f"vmrun: error: preflight: qemu: {qemu} 9.0.0 has neither -run-with user= nor -runas, so it would "
            "keep root's privileges: use a qemu that has either, or run vmrun as another user"
            ) in refused.stderr.splitlines()
