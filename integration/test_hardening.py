"""vmrun as an attacker and a careless user try it, with real qemu (TCG), real taps, a real bridge and KSM.

Each VM here is guest-less (an empty disk), so nothing waits for a guest unless a test asks for the agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import Vmrun, qemu_pids_of

KSM_RUN = Path("/sys/kernel/mm/ksm/run")
SUFFIX = str(os.getpid())[-5:]
MakeSpec = Callable[..., Path]


def net(name: str) -> Path:
    return Path("/sys/class/net") / name


@pytest.fixture
def ksm_restored() -> Iterator[str]:
    """The host's KSM setting before the test, put back after it whatever happens."""
    before = KSM_RUN.read_text().strip()
    yield before
    if KSM_RUN.read_text().strip() != before:
        KSM_RUN.write_text(before)


@pytest.fixture
def bridge() -> Iterator[str]:
    name = f"vmrtbr{SUFFIX}"
    subprocess.run(["ip", "link", "add", "name", name, "type", "bridge"], check=True)
    yield name
    subprocess.run(["ip", "link", "del", name], check=True)


@pytest.fixture
def spec_with_a_tap(guestless_spec: Callable[..., Path]) -> Callable[..., Path]:
    """A guest-less VM with a derived two-queue tap ("<name>.n0"), optionally on a bridge and wanting KSM."""

    def make(name: str, *, agent: bool = False, ksm: bool = False, bridge: str = "") -> Path:
        bridge_line = f'bridge = "{bridge}"' if bridge else ""
        nic_and_host = f'[[nics]]\nid = "n0"\nqueues = 2\n{bridge_line}\n[host]\nksm = {"true" if ksm else "false"}'
        return guestless_spec(name, nic_and_host, agent=agent, cpus=2)

    return make


def assert_nothing_left(vmrun: Vmrun, name: str) -> None:
    assert not net(f"{name}.n0").exists(), f"tap {name}.n0 left behind"
    assert qemu_pids_of(vmrun.run_root) == []
    assert not (vmrun.run_root / name).exists()


def test_killed_at_every_step_of_up_then_down_force_leaves_nothing(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec, ksm_restored: str
) -> None:
    name = f"k{SUFFIX}"
    spec = spec_with_a_tap(name, ksm=True)
    steps = []
    for step in range(1, 40):
        up = vmrun("up", str(spec), env={"VMRUN_TEST_KILL_AT": str(step)})
        if up.returncode == 0:
            break
        assert up.returncode == -signal.SIGKILL, up.stderr
        steps.append(up.stderr.strip().splitlines()[-1].split("killed at ")[-1])
        down = vmrun("down", "--force", name)
        assert down.returncode == 0, down.stderr
        assert_nothing_left(vmrun, name)
        assert KSM_RUN.read_text().strip() == ksm_restored, f"KSM left on after a kill {steps[-1]}"
    else:
        pytest.fail("up never got past its crash points")
    # Every kind of step was hit: the run dir, the tap, KSM, and the launch.
    assert steps[0] == "after creating the run directory"
    assert any(step.startswith("before ip tuntap add") for step in steps)
    assert any(step.startswith("after ip tuntap add") for step in steps)
    assert any("/sys/kernel/mm/ksm/run" in step for step in steps)
    assert steps[-1] == "after launching qemu"
    assert vmrun("down", "--timeout", "1", name).returncode == 0
    assert_nothing_left(vmrun, name)


def test_a_killed_up_is_cleaned_up_by_the_next_up(vmrun: Vmrun, spec_with_a_tap: MakeSpec) -> None:
    name = f"n{SUFFIX}"
    spec = spec_with_a_tap(name)
    killed = vmrun("up", str(spec), env={"VMRUN_TEST_KILL_AT": "3"})  # after the tap was created
    assert killed.returncode == -signal.SIGKILL
    assert net(f"{name}.n0").exists()
    up = vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    assert "cleaning up after a run that died" in up.stderr
    assert vmrun("down", "--timeout", "1", name).returncode == 0
    assert_nothing_left(vmrun, name)


@pytest.mark.parametrize("racers", [2, 4])
def test_concurrent_ups_of_one_spec_start_exactly_one_qemu(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec, racers: int
) -> None:
    name = f"c{racers}x{SUFFIX}"
    spec = spec_with_a_tap(name)
    processes = [subprocess.Popen(vmrun.argv("up", str(spec)), stderr=subprocess.PIPE, text=True)
                 for _ in range(racers)]
    outcomes = [finish(process) for process in processes]
    try:
        # One racer launches qemu. The others find its lock held (exit 2), or, when they start after it
        # finished, the VM up to date (exit 0, declarative up): none starts a second qemu.
        assert [code for code, stderr in outcomes if "qemu pid" in stderr] == [0], outcomes
        for code, stderr in outcomes:
            assert "Traceback" not in stderr
            if "qemu pid" not in stderr:
                assert (code, "up to date" in stderr) == (0, True) or (
                    code == 2 and "is running or starting" in stderr), stderr
        assert len(qemu_pids_of(vmrun.run_root)) == 1
    finally:
        assert vmrun("down", "--timeout", "1", name).returncode == 0
    assert_nothing_left(vmrun, name)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def wait_for_line(process: subprocess.Popen[str], *texts: str) -> None:
    """Read vmrun's stderr until each text has appeared in some line."""
    seen, missing = [], set(texts)
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        missing = {text for text in missing if text not in line}
        if not missing:
            return
    pytest.fail(f"vmrun never said {sorted(missing)}: {''.join(seen)}")


def test_sigterm_while_waiting_for_the_agent_rolls_everything_back(vmrun: Vmrun, spec_with_a_tap: MakeSpec) -> None:
    name = f"t{SUFFIX}"
    spec = spec_with_a_tap(name, agent=True)
    process = subprocess.Popen(vmrun.argv("up", str(spec)), stderr=subprocess.PIPE, text=True)
    wait_for_line(process, "waiting for the guest agent")
    assert net(f"{name}.n0").exists() and len(qemu_pids_of(vmrun.run_root)) == 1
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert_nothing_left(vmrun, name)


def test_qemu_dying_during_start_up_exits_4_and_undoes_the_host_changes(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec
) -> None:
    name = f"d{SUFFIX}"
    spec = spec_with_a_tap(name, agent=True)
    process = subprocess.Popen(vmrun.argv("up", str(spec)), stderr=subprocess.PIPE, text=True)
    wait_for_line(process, "waiting for the guest agent")
    [pid] = qemu_pids_of(vmrun.run_root)
    os.kill(pid, signal.SIGKILL)
    code, stderr = finish(process)
    assert code == 4, stderr
    assert "qemu exited during start-up" in stderr
    assert_nothing_left(vmrun, name)


def test_parallel_vms_share_ksm_and_a_bridge_and_the_last_one_down_restores_ksm(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec, ksm_restored: str, bridge: str
) -> None:
    names = [f"p{index}x{SUFFIX}" for index in range(3)]
    specs = [spec_with_a_tap(name, ksm=True, bridge=bridge) for name in names]
    processes = [subprocess.Popen(vmrun.argv("up", str(spec)), stderr=subprocess.PIPE, text=True) for spec in specs]
    try:
        for process in processes:
            code, stderr = finish(process)
            assert code == 0, stderr
        assert KSM_RUN.read_text().strip() == "1"
        for name in names:
            assert (net(f"{name}.n0") / "master").resolve().name == bridge
        for name in names[:-1]:
            assert vmrun("down", "--timeout", "1", name).returncode == 0
            assert KSM_RUN.read_text().strip() == "1", "KSM turned off while another VM wants it"
    finally:
        for name in names:
            vmrun("down", "--force", name)
    assert KSM_RUN.read_text().strip() == ksm_restored
    for name in names:
        assert_nothing_left(vmrun, name)
    assert not list((net(bridge) / "brif").iterdir())


def test_standalone_preflight_is_undone_by_down(vmrun: Vmrun, spec_with_a_tap: MakeSpec) -> None:
    name = f"s{SUFFIX}"
    spec = spec_with_a_tap(name)
    preflight = vmrun("preflight", str(spec))
    assert preflight.returncode == 0, preflight.stderr
    assert net(f"{name}.n0").exists()
    status = vmrun("status", name, "--json")
    assert '"state": "prepared"' in status.stdout
    down = vmrun("down", name)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(vmrun, name)


def test_down_returns_only_once_qemu_is_gone(vmrun: Vmrun, spec_with_a_tap: MakeSpec) -> None:
    name = f"g{SUFFIX}"
    spec = spec_with_a_tap(name)
    assert vmrun("up", str(spec)).returncode == 0
    [pid] = qemu_pids_of(vmrun.run_root)
    started = time.monotonic()
    assert vmrun("down", "--force", name).returncode == 0
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z"
    assert time.monotonic() - started < 60
    assert_nothing_left(vmrun, name)


def test_ctrl_c_during_up_of_a_directory_rolls_back_every_vm_still_starting(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec
) -> None:
    names = [f"i{index}x{SUFFIX}" for index in range(2)]
    for name in names:
        spec_with_a_tap(name, agent=True)
    process = subprocess.Popen(vmrun.argv("up", str(vmrun.spec_dir)), stderr=subprocess.PIPE, text=True)
    wait_for_line(process, *(f"{name}: waiting for the guest agent" for name in names))
    process.send_signal(signal.SIGINT)
    code, stderr = finish(process)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted, rolled back" in stderr.strip().splitlines()[-1]
    for name in names:
        assert_nothing_left(vmrun, name)


def test_host_drift_of_a_running_vm_is_named_by_diff_and_status_and_mended_by_a_restart(
    vmrun: Vmrun, spec_with_a_tap: MakeSpec, ksm_restored: str, bridge: str
) -> None:
    name = f"h{SUFFIX}"
    tap = f"{name}.n0"
    spec = spec_with_a_tap(name, ksm=True, bridge=bridge)
    up = vmrun("up", str(spec))
    assert up.returncode == 0, up.stderr
    try:
        diff = vmrun("diff", str(spec))
        assert (diff.returncode, diff.stdout) == (0, f"{name}: up to date\n")

        subprocess.run(["ip", "link", "set", tap, "nomaster"], check=True)
        KSM_RUN.write_text("0")
        off_bridge = f"nics[0].bridge: tap {tap} is no longer attached to bridge {bridge}"
        ksm_off = f"host.ksm: KSM is off on the host ({KSM_RUN} = 0)"
        diff = vmrun("diff", str(spec))
        assert (diff.returncode, diff.stdout) == (6, f"{name}: differs\n  {off_bridge}\n  {ksm_off}\n")
        [status] = json.loads(vmrun("status", name, "--json").stdout)
        assert status["host_drift"] == [off_bridge, ksm_off]
        assert vmrun("status", name).stdout.splitlines()[-2:] == [f"  host drift: {off_bridge}",
                                                                  f"  host drift: {ksm_off}"]
        refused = vmrun("up", str(spec))
        assert refused.returncode == 2
        assert f"{name} runs with another configuration: {off_bridge}; {ksm_off}" in refused.stderr

        restarted = vmrun("up", "--restart", "--timeout", "1", str(spec))
        assert restarted.returncode == 0, restarted.stderr
        assert (net(tap) / "master").resolve().name == bridge and KSM_RUN.read_text().strip() == "1"
        assert vmrun("diff", str(spec)).returncode == 0

        subprocess.run(["ip", "link", "del", tap], check=True)
        diff = vmrun("diff", str(spec))
        assert (diff.returncode, diff.stdout) == (6, f"{name}: differs\n  nics[0]: tap {tap} is gone from the host\n")
    finally:
        down = vmrun("down", "--timeout", "1", name)
    assert down.returncode == 0, down.stderr
    # The tap is gone, so taking it off the bridge cannot be undone: said, and the rest is undone.
    assert down.stderr.splitlines() == [
        f"vmrun: asking {name} to power down (ACPI), waiting up to 1 s",
        f"vmrun: {name} ignored the powerdown; quitting qemu",
        f'vmrun: could not undo: ip link set {tap} nomaster down: Cannot find device "{tap}"',
        f"vmrun: {name} stopped (QMP quit)",
    ]
    assert KSM_RUN.read_text().strip() == ksm_restored
    assert_nothing_left(vmrun, name)
