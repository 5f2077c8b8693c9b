"""`vmrun status` answers from what the host knows: vmrun's state and /proc, no agent asked unless -a."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmrun.cli.main import main
from vmrun.spec.load import converter, load_spec
from vmrun.state.locations import Places, RunPaths
from vmrun.state.vmstate import PortForward, VmState, create_run_dir

from .common import SPECS


def stand_in_qemu(name: str) -> subprocess.Popen[bytes]:
    """A process that carries a VM's -name on its command line, as its qemu does."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "-name", f"guest={name},process=vmrun-{name}"])


def recorded(run_root: Path, name: str, *, forwards: tuple[PortForward, ...] = ()) -> RunPaths:
    spec = load_spec(SPECS / "tiny-user.toml")
    paths = Places(run_root=run_root, state_root=run_root / "state").of(name)
    create_run_dir(paths, VmState(name=name, spec_path="x.toml", argv=("qemu",), accel="tcg", accel_reason="test",
                                  started_at=1_000_000_000.0, spec=converter.unstructure(spec), forwards=forwards))
    return paths


@pytest.fixture
def running(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    qemu = stand_in_qemu("web")
    ssh = PortForward(nic="net0", index=0, forward="tcp:auto:22", protocol="tcp", address="127.0.0.1", host_port=2222,
                      guest_port=22)
    recorded(tmp_path, "web", forwards=(ssh,)).pidfile.write_text(f"{qemu.pid}\n")
    yield qemu
    qemu.kill()
    qemu.wait()


def status(capsys: pytest.CaptureFixture[str], run_root: Path, *arguments: str) -> tuple[int, str, str]:
    code = main(["--run-dir", str(run_root), "--state-dir", str(run_root / "state"), "status", *arguments])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_running_vm_is_told_from_its_state_and_its_pid_without_asking_it(
    tmp_path: Path, running: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = status(capsys, tmp_path, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == [{
        "name": "web", "state": "running", "pid": running.pid, "accel": "tcg", "run_dir": str(tmp_path / "web"),
        "started_at": "2001-09-09T01:46:40+00:00", "uptime": pytest.approx(json.loads(out)[0]["uptime"]),
        "forwards": ["tcp 127.0.0.1:2222 -> guest port 22"],
    }]
    assert json.loads(out)[0]["uptime"] > 10**8
    code, out, err = status(capsys, tmp_path)
    line, forward = out.splitlines()[-2:]
    assert line.split()[:5] == ["web", "running", "pid", str(running.pid), "tcg"]
    assert (forward, "agent" in line) == ("  forward: tcp 127.0.0.1:2222 -> guest port 22", False)


def test_addresses_are_asked_only_with_a_and_a_silent_agent_is_named(
    tmp_path: Path, running: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = status(capsys, tmp_path, "web", "-a", "--json")
    [vm] = json.loads(out)
    assert (code, vm["state"], vm["agent"], vm["addresses"], err) == (0, "stopped", None, None, "")  # no agent
    with socket.socket(socket.AF_UNIX) as silent:  # an agent socket nobody answers on
        silent.bind(str(tmp_path / "web" / "qga.sock"))
        code, out, err = status(capsys, tmp_path, "web", "-a", "--json")
    [vm] = json.loads(out)
    assert (code, vm["agent"], vm["addresses"]) == (0, False, None)
    assert err == "vmrun: the guest agent of web did not answer within 1 s\n"


def test_a_pid_that_is_not_the_vms_qemu_is_dead(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = stand_in_qemu("other")
    try:
        recorded(tmp_path, "web").pidfile.write_text(f"{other.pid}\n")
        code, out, _ = status(capsys, tmp_path, "--json")
    finally:
        other.kill()
        other.wait()
    [vm] = json.loads(out)
    assert (code, vm["state"], vm["pid"], vm["started_at"], vm["forwards"]) == (0, "dead", None, None, [])


def test_a_vm_that_does_not_exist_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded(tmp_path, "web")
    code, out, err = status(capsys, tmp_path, "web", "nosuch")
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == f"vmrun: error: no VM nosuch under {tmp_path}"


@pytest.mark.parametrize("command", [
    ["status", "db"], ["console", "db"], ["logs", "db"], ["exec", "db", "--", "true"], ["cp", "f", "db:/f"],
    ["ssh", "db"],
])
def test_a_user_is_told_that_a_vm_may_be_roots(
    tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    roots = tmp_path / "root-run"
    recorded(roots, "db")
    monkeypatch.setattr("vmrun.run.status.ROOT_RUN_ROOT", roots)
    monkeypatch.setattr("vmrun.run.status.os.geteuid", lambda: 1000)
    (tmp_path / "f").write_text("x")
    monkeypatch.chdir(tmp_path)
    code = main(["--run-dir", str(tmp_path / "mine"), "--state-dir", str(tmp_path / "state"), *command])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == (f"vmrun: error: no VM db under {tmp_path / 'mine'}: it is root's ({roots / 'db'})\n"
                   "vmrun: hint: run the same command with sudo\n")
