"""up / status / down against a real qemu with no guest OS (TCG)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import Vmrun


def status_of(vmrun: Vmrun) -> list[dict[str, object]]:
    result = vmrun("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_up_status_double_up_and_down_escalates_to_quit(vmrun: Vmrun, guestless_spec: Callable[..., Path]) -> None:
    spec = guestless_spec()
    up = vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    assert "accel tcg: the spec asks for tcg" in up.stderr
    [vm] = status_of(vmrun)
    assert vm["name"] == "bare" and vm["state"] == "running" and vm["accel"] == "tcg"
    assert isinstance(vm["pid"], int) and os.path.exists(f"/proc/{vm['pid']}")
    assert oct(os.stat(vm["run_dir"]).st_mode & 0o777) == "0o700"

    again = vmrun("up", str(spec))  # declarative: the same configuration is left alone
    assert again.returncode == 0, again.stderr
    assert "bare: up to date" in again.stderr
    assert status_of(vmrun)[0]["pid"] == vm["pid"]

    # The firmware has no ACPI power button handler: powerdown is ignored, quit ends it.
    down = vmrun("down", "bare", "--timeout", "1")
    assert down.returncode == 0, down.stderr
    assert "bare stopped (QMP quit)" in down.stderr
    cmdline = Path(f"/proc/{vm['pid']}/cmdline")
    assert not cmdline.exists() or b"vmrun-bare" not in cmdline.read_bytes()
    assert status_of(vmrun) == []


def test_killed_qemu_shows_dead_and_next_up_recovers(vmrun: Vmrun, guestless_spec: Callable[..., Path]) -> None:
    spec = guestless_spec()
    assert vmrun("up", str(spec)).returncode == 0
    pid = status_of(vmrun)[0]["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while status_of(vmrun)[0]["state"] != "dead" and time.monotonic() < deadline:
        time.sleep(0.1)
    [vm] = status_of(vmrun)
    assert vm["state"] == "dead" and vm["pid"] is None

    up = vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    assert "cleaning up after a run that died" in up.stderr
    assert status_of(vmrun)[0]["state"] == "running"
    assert vmrun("down", str(spec), "--force").returncode == 0


def test_qemu_refusing_an_option_exits_4_with_its_own_message(
    vmrun: Vmrun, guestless_spec: Callable[..., Path]
) -> None:
    spec = guestless_spec(extra='[qemu]\nextra_args = ["-device", "no-such-device"]')
    up = vmrun("up", str(spec))
    assert up.returncode == 4
    assert "qemu failed to start" in up.stderr and "no-such-device" in up.stderr
    assert "Traceback" not in up.stderr
    assert status_of(vmrun) == []


def test_down_force_and_down_of_a_stopped_vm(vmrun: Vmrun, guestless_spec: Callable[..., Path]) -> None:
    spec = guestless_spec()
    assert vmrun("up", str(spec)).returncode == 0
    forced = vmrun("down", "bare", "--force")
    assert forced.returncode == 0 and "stopped (QMP quit)" in forced.stderr
    assert "power down" not in forced.stderr
    again = vmrun("down", "bare")
    assert again.returncode == 0 and "bare is not running" in again.stderr


def test_exec_and_console_need_a_running_vm(vmrun: Vmrun) -> None:
    result = vmrun("exec", "ghost", "--", "true")
    assert result.returncode == 2 and f"no VM ghost under {vmrun.run_root}" in result.stderr


def test_agent_that_never_answers_exits_5_and_leaves_the_vm_for_inspection(
    vmrun: Vmrun, guestless_spec: Callable[..., Path]
) -> None:
    spec = guestless_spec(extra="")
    spec.write_text(spec.read_text().replace("enabled = false", 'enabled = true\ntimeout = "3s"'))
    up = vmrun("up", str(spec))
    assert up.returncode == 5, up.stderr
    assert "bare: the guest agent did not answer within 3 s" in up.stderr
    assert "vmrun down bare" in up.stderr
    assert status_of(vmrun)[0]["state"] == "running"
    assert vmrun("down", "bare", "--force").returncode == 0


def test_refused_preflight_exits_3_and_changes_nothing(vmrun: Vmrun, guestless_spec: Callable[..., Path]) -> None:
    tap = f"vmrtx{os.getpid() % 100000}"
    spec = guestless_spec(extra=f'[[nics]]\nid = "n0"\ntap = "{tap}"\nbridge = "no-such-br0"')
    up = vmrun("up", str(spec))
    assert up.returncode == 3
    assert "preflight: nics n0: bridge no-such-br0 does not exist" in up.stderr
    assert not Path(f"/sys/class/net/{tap}").exists()
    assert status_of(vmrun) == []


def test_uefi_variables_outlive_a_run_and_fresh_resets_them(
    vmrun: Vmrun, guestless_spec: Callable[..., Path]
) -> None:
    spec = guestless_spec()
    spec.write_text(spec.read_text().replace('disk = "empty"', 'disk = "empty"\nfirmware = "uefi"'))
    variables = vmrun.spec_dir / "state" / "bare" / "OVMF_VARS.fd"
    up = vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    assert f"fresh UEFI variables in {variables}" in up.stderr
    assert vmrun("down", "bare", "--force").returncode == 0
    assert variables.exists()  # the guest's boot entries survive down
    assert oct(variables.parent.stat().st_mode & 0o777) == "0o700"  # they, and a seed's user-data, are private
    variables.write_bytes(variables.read_bytes()[:-1] + b"\x01")
    kept = variables.read_bytes()
    again = vmrun("up", str(spec))
    assert again.returncode == 0 and "fresh UEFI variables" not in again.stderr
    assert variables.read_bytes() == kept
    assert vmrun("down", "bare", "--force").returncode == 0
    fresh = vmrun("up", str(spec), "--fresh")
    assert fresh.returncode == 0 and "fresh UEFI variables" in fresh.stderr
    assert variables.read_bytes() == Path("/usr/share/OVMF/OVMF_VARS_4M.fd").read_bytes()
    assert vmrun("down", "bare", "--force").returncode == 0


def test_drift_is_named_in_spec_terms_refused_and_applied_with_restart(
    vmrun: Vmrun, guestless_spec: Callable[..., Path]
) -> None:
    spec = guestless_spec()
    assert vmrun("up", str(spec)).returncode == 0
    pid = status_of(vmrun)[0]["pid"]
    try:
        same = vmrun("diff", str(spec))
        assert same.returncode == 0 and same.stdout == "bare: up to date\n"

        spec.write_text(spec.read_text().replace('memory = "64M"', 'memory = "96M"'))
        drift = vmrun("diff", str(spec))
        assert drift.returncode == 6
        assert drift.stdout == "bare: differs\n  machine.memory: 64M → 96M\n"
        assert json.loads(vmrun("diff", "--json", str(spec)).stdout) == [{
            "name": "bare", "spec": str(spec), "state": "running", "drift": "differs",
            "differences": ["machine.memory: 64M → 96M"],
        }]

        refused = vmrun("up", str(spec))
        assert refused.returncode == 2
        assert "bare runs with another configuration: machine.memory: 64M → 96M" in refused.stderr
        assert status_of(vmrun)[0]["pid"] == pid  # untouched

        restarted = vmrun("up", "--restart", "--timeout", "1", str(spec))
        assert restarted.returncode == 0, restarted.stderr
        assert status_of(vmrun)[0]["pid"] != pid
        assert vmrun("diff", str(spec)).returncode == 0
    finally:
        assert vmrun("down", "--force", "bare").returncode == 0
    gone = vmrun("diff", str(spec))
    assert gone.returncode == 6 and gone.stdout == "bare: not running\n"


def test_a_directory_comes_up_in_parallel_and_goes_down_with_all(
    vmrun: Vmrun, guestless_spec: Callable[..., Path]
) -> None:
    for name in ("one", "two", "three"):
        guestless_spec(name)
    (vmrun.spec_dir / "broken.toml").write_text('name = "Broken"\n')
    up = vmrun("up", str(vmrun.spec_dir))
    try:
        assert up.returncode == 2, up.stderr  # the broken spec; the others start anyway
        assert f"vmrun: error: {vmrun.spec_dir / 'broken.toml'}: name:" in up.stderr
        assert "one: launching one" in up.stderr
        assert sorted(vm["name"] for vm in status_of(vmrun)) == ["one", "three", "two"]
        summary = up.stderr.strip().splitlines()[-1]
        assert summary.startswith("vmrun: 4 VMs: ") and "one started" in summary
        assert "broken.toml invalid (exit 2)" in summary
        (vmrun.spec_dir / "broken.toml").unlink()
        again = vmrun("up", str(vmrun.spec_dir))
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("up to date") >= 3
    finally:
        down = vmrun("down", "--all", "--force")
        assert down.returncode == 0, down.stderr
    assert status_of(vmrun) == []


def test_a_changed_user_data_file_is_drift_though_the_spec_is_the_same(
    vmrun: Vmrun, guestless_spec: Callable[..., Path]
) -> None:
    user_data = vmrun.spec_dir / "user-data.yaml"
    user_data.write_text("#cloud-config\nhostname: first\n")
    spec = guestless_spec(extra='[cloud_init]\nuser_data = "user-data.yaml"')
    assert vmrun("up", str(spec)).returncode == 0
    try:
        assert vmrun("diff", str(spec)).returncode == 0
        user_data.write_text("#cloud-config\nhostname: second\n")
        drift = vmrun("diff", str(spec))
        assert drift.returncode == 6
        assert "  cloud_init: the seed's files changed (instance-id iid-bare-" in drift.stdout
    finally:
        assert vmrun("down", "--force", "bare").returncode == 0
