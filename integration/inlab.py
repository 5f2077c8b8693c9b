"""The lab (integration/lab/lab) seen from a test: vmrun and shell commands run on the L1 kernel.

The lab shares this host's /tmp, so a test's tmp_path is the same directory in the lab. Run directories
go under the lab's own tmpfs /run: qemu cannot create its sockets on the 9p /tmp.

The lab boots in the background as soon as collection shows a lab test (a few minutes under TCG, which the
tests before the first lab test hide), and stops as soon as the last lab test is done; the terminal summary
shows where its time went.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import attrs
import pytest

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "integration" / "lab" / "lab"
SPARE_NIC = "8086:10d3"  # the lab's spare e1000e functions, each alone in its IOMMU group
LAB_RUN_ROOT = "/run/vmrun-lab-test"
LAB_TIMED_OUT = 124  # `lab exec --timeout`: it killed the job in the lab
KILL_MARGIN = 120.0  # for `lab exec` to kill a job that timed out, through L1's agent under TCG


def guestless_toml(name: str, extra: str = "", *, accel: str = "tcg", cpus: int = 1, agent: bool = False,
                   machine: str = "") -> str:
    """A VM with an empty disk NAME.raw beside its spec: firmware finds nothing to boot and ignores ACPI.
    machine: more lines of its [machine] table."""
    return textwrap.dedent(f"""\
        name = "{name}"
        [machine]
        accel = "{accel}"
        cpus = {cpus}
        memory = "64M"
        """) + "".join(f"{line.strip()}\n" for line in machine.splitlines()) + textwrap.dedent(f"""\
        [boot]
        disk = "empty"
        [[disks]]
        id = "empty"
        path = "{name}.raw"
        [agent]
        enabled = {"true" if agent else "false"}
        """) + textwrap.dedent(extra) + "\n"  # tests append tables to it


def lab_command(*args: str, timeout: float = 900, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    with LAB_TIME.counting(args[0]):
        return subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@attrs.define
class LabTime:
    """Where the lab's time goes in this session: its phases, and the lab commands run."""

    phases: dict[str, float] = attrs.Factory(dict)
    calls: dict[str, int] = attrs.Factory(dict)
    notes: list[str] = attrs.Factory(list)

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds
        self.calls[phase] = self.calls.get(phase, 0) + 1

    @contextlib.contextmanager
    def counting(self, phase: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(phase, time.monotonic() - started)

    def summary(self) -> list[str]:
        if not self.phases:
            return []
        shown = ", ".join(f"{phase} {seconds:.0f} s" + (f" ({self.calls[phase]} runs)" if self.calls[phase] > 1 else "")
                          for phase, seconds in self.phases.items())
        return [f"lab: {shown}", *(f"lab: {note}" for note in self.notes)]


LAB_TIME = LabTime()


@attrs.frozen
class Lab:
    """One test's view of the lab: its spec directory here (and there), its run root there."""

    spec_dir: Path
    run_root: str = LAB_RUN_ROOT
    # Every run root this test's vmrun used, shared by the copies with_run_root makes: snapshots and the
    # fixture's teardown look at all of them.
    run_roots: list[str] = attrs.Factory(lambda: [LAB_RUN_ROOT])

    def with_run_root(self, run_root: str) -> Lab:
        """This test's lab with vmrun's run directories under run_root."""
        if run_root not in self.run_roots:
            self.run_roots.append(run_root)
        return attrs.evolve(self, run_root=run_root)

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path = REPO,
            ) -> subprocess.CompletedProcess[str]:
        """ARGV in the lab, in cwd (there as here); killed there after timeout (subprocess.TimeoutExpired)."""
        options = [f"--env={name}={value}" for name, value in (env or {}).items()]
        # The lab kills the job itself: a timeout here would leave it running in L1 under later tests.
        done = lab_command("exec", *options, f"--timeout={timeout}", "--", *argv, timeout=timeout + KILL_MARGIN,
                           cwd=cwd)
        if done.returncode == LAB_TIMED_OUT and "timed out after" in done.stderr:
            raise subprocess.TimeoutExpired(argv, timeout, done.stdout, done.stderr)
        return done

    def sh(self, script: str, timeout: float = 300) -> str:
        """A shell script in the lab that must succeed; its stdout."""
        done = self.run("/bin/sh", "-ec", script, timeout=timeout)
        assert done.returncode == 0, f"in the lab: {script}\n{done.stderr}"
        return done.stdout

    def vmrun(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600,
              ) -> subprocess.CompletedProcess[str]:
        # Crash points are honoured only with this interpreter option (vmrun.crashpoints).
        armed = ["-X", "vmrun-crash-points"] if env and "VMRUN_TEST_KILL_AT" in env else []
        return self.run(str(REPO / ".venv/bin/python"), *armed, "-m", "vmrun", "--run-dir", self.run_root,
                        "--state-dir", str(self.spec_dir / "state"), *args, env=env, timeout=timeout)

    def vmrun_json(self, *args: str) -> Any:
        done = self.vmrun(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def spec(self, text: str, name: str) -> Path:
        path = self.spec_dir / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        return path

    def pci(self) -> dict[str, dict[str, str]]:
        """Every PCI function as the L1 kernel has it: driver, driver_override, ids, class, group."""
        found = {}
        for line in self.sh(self.snapshot_command("--pci")).splitlines():
            address, driver, override, ids, device_class, group = line.split("\t")
            found[address] = {"driver": driver, "override": override, "ids": ids, "class": device_class,
                              "group": group}
        return found

    def snapshot(self) -> str:
        """All a VM's `up` may change in the kernel (integration/lab/snapshot): equal snapshots, same kernel."""
        return self.sh(self.snapshot_command(*self.run_roots))

    @staticmethod
    def snapshot_command(*args: str) -> str:
        # One Python reading sysfs: a shell loop's dozens of processes took a minute under TCG.
        return shlex.join([str(REPO / ".venv/bin/python"), "-I", str(LAB.parent / "snapshot"), *args])

    def spare_nics(self) -> list[str]:
        return sorted(address for address, device in self.pci().items() if device["ids"] == SPARE_NIC)

    def read(self, path: str) -> str:
        return self.sh(f"cat {shlex.quote(path)}").strip()


def uses_lab(item: pytest.Item) -> bool:
    return "lab_session" in getattr(item, "fixturenames", ())


@attrs.define
class LabBoot:
    """`lab up` in the background from collection on; stopped after the last lab test if this session booted it."""

    last_test: str | None = None
    ours: bool = False
    booting: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started: float = 0.0
    joined: bool = False

    def start(self) -> None:
        if self.booting is not None or self.joined:
            return
        # A lab that another session runs (or is booting) is used and left running.
        self.ours = "stopped" in lab_command("status").stdout
        self.log = tempfile.TemporaryFile()
        self.started = time.monotonic()
        self.booting = subprocess.Popen([str(LAB), "up"], stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)

    def join(self) -> None:
        if self.joined:
            return
        self.start()
        assert self.booting is not None and self.log is not None
        waiting = time.monotonic()
        status = self.booting.wait(timeout=1800)
        LAB_TIME.add("boot" if self.ours else "up (already running)", time.monotonic() - self.started)
        LAB_TIME.add("first lab test waited", time.monotonic() - waiting)
        with self.log:
            self.log.seek(0)
            output = self.log.read().decode(errors="replace")
        self.booting, self.log, self.joined = None, None, True
        assert status == 0, f"lab up failed:\n{output}"
        LAB_TIME.notes += [line.removeprefix("lab: ") for line in output.splitlines() if line.startswith("lab: ")]

    def stop(self) -> None:
        if self.booting is not None and self.log is not None:  # interrupted before the first lab test
            self.booting.terminate()
            self.booting.wait()
            self.log.close()
            self.booting, self.log = None, None
        if self.ours:
            self.ours = False
            with LAB_TIME.counting("down"):
                subprocess.run([str(LAB), "down"], capture_output=True, check=False, cwd=REPO)


LAB_BOOT = LabBoot()


def pytest_collection_finish(session: pytest.Session) -> None:
    in_lab = [item for item in session.items if uses_lab(item)]
    if in_lab and not session.config.option.collectonly:
        LAB_BOOT.last_test = in_lab[-1].nodeid
        LAB_BOOT.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    if item.nodeid == LAB_BOOT.last_test:  # the tests after it need no lab: stop it while they run
        LAB_BOOT.stop()


def pytest_sessionfinish(session: pytest.Session) -> None:
    LAB_BOOT.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in LAB_TIME.summary():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def lab_session() -> Iterator[None]:
    """The lab, booted once for the session (from collection on); stopped after the last lab test only if this
    session booted it."""
    LAB_BOOT.join()
    yield
    LAB_BOOT.stop()


@pytest.fixture
def lab(lab_session: None, tmp_path: Path) -> Iterator[Lab]:
    """A test in the lab; whatever VMs it leaves are taken down by vmrun there, and the test fails."""
    in_lab = Lab(spec_dir=tmp_path)
    yield in_lab
    left = {}
    for run_root in in_lab.run_roots:
        left[run_root] = in_lab.sh(f"ls -A {shlex.quote(run_root)} 2>/dev/null | grep -vx .locks || true").split()
        if left[run_root]:
            in_lab.with_run_root(run_root).vmrun("down", "--all", "--force")
    assert not any(left.values()), f"test left VMs in the lab: {left}"
