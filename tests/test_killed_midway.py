"""A vmrun killed at any crash point of `up` or of `down`: the next `up` cleans up the dead run and starts the VM
(and `down` then leaves the host as it was), the next `down` finishes the job. Each run to kill goes in a real fork
(the kernel drops its locks, as it does a killed vmrun's), on a fake host tree whose qemu is a process entry in its
/proc and which takes every kind of change: a disk image, a tap on a bridge, KSM, huge pages, vfio-pci bindings."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import attrs
import pytest

from vmrun import crashpoints
from vmrun.qemu import process
from vmrun.run import ending, lifecycle
from vmrun.spec.model import Spec
from vmrun.state.locations import Places

from .fakehost import FakeHost, add_bridge, snapshot
from .test_preflight import GPU, GPU_AUDIO, ROOT_FACTS, fake_host, make_spec

MAX_POINTS = 200


@attrs.frozen
class QemuHost(FakeHost):
    """A fake host on which qemu -daemonize starts at once (a /proc entry and its pidfile) and ends when
    signalled: its start_daemon stands in for vmrun.qemu.process's."""

    def start_daemon(self, argv: list[str], *, memlock: int | None, timeout: float) -> None:
        pid = max((int(name) for name in self.listdir("/proc") if name.isdigit()), default=40000) + 1
        self.path(f"/proc/{pid}").mkdir(parents=True)
        self.path(f"/proc/{pid}/cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in argv))
        self.path(f"/proc/{pid}/stat").write_text(f"{pid} (qemu-system-x86) S 1")
        Path(argv[argv.index("-pidfile") + 1]).write_text(f"{pid}\n")

    def signal(self, pid: int, number: int) -> None:
        shutil.rmtree(self.path(f"/proc/{pid}"), ignore_errors=True)


HUGE_POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB"


def every_kind(tmp_path: Path) -> Spec:
    """A VM that makes each kind of change a fake host can take: a disk image, a tap on a bridge, KSM, huge
    pages reserved, and an IOMMU group's functions bound to vfio-pci with their node given to qemu's user."""
    return make_spec(
        disks=[{"id": "d", "path": str(tmp_path / "disks" / "d.raw"), "format": "raw", "size": "1M"}],
        nics=[{"id": "n0", "tap": "vmtap0", "queues": 2, "bridge": "br0"}],
        vfio=[{"id": "gpu", "host": "03:00.0"}, {"id": "audio", "host": "03:00.1"}],
        machine={"memory": "1G", "cpus": 2, "hugepages": "2M"}, host={"user": "nobody", "ksm": True},
        agent={"enabled": False},
    )


@pytest.fixture(autouse=True)
def fake_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = attrs.evolve(ROOT_FACTS, qemu_program=Path("/usr/bin/qemu-system-x86_64"))
    monkeypatch.setattr(lifecycle, "gather_facts", lambda *_, **__: facts)
    monkeypatch.setattr(lifecycle, "_confirm_running", lambda paths: None)  # this qemu has no QMP socket
    monkeypatch.setattr("vmrun.qemu.process.KILL_WAIT", 0.01)  # nor does it wait to be asked to quit


def killed(run: Callable[[], object], point: int) -> str | None:
    """run (up or down) in a fork armed to kill itself at the point-th crash point: the point's label, None
    when it ran to the end instead."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the fork's exit status is its result
        os.close(reader)
        sys.stderr = os.fdopen(writer, "w", buffering=1)  # where crash_point names the point
        os.environ[crashpoints.TARGETS] = str(point)
        sys._xoptions[crashpoints.ARMED_BY] = True
        try:
            run()
        except BaseException:  # noqa: BLE001 - any way out but the kill is a failure of this test
            os._exit(1)
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as stderr:
        said = stderr.read()
    _, status = os.waitpid(child, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return None
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, said
    return said.strip().splitlines()[-1].split(": ", 3)[-1]


def points(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    for point in itertools.count(1):
        assert point < MAX_POINTS, "never got past its crash points"
        where = tmp_path / str(point)
        where.mkdir()
        yield point, where


def quiet(_: str) -> None:
    pass


def fresh_host(where: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[QemuHost, Places, Spec]:
    """A fake host that can take every kind of change, its roots under where, and the VM that makes them."""
    fake = fake_host(where, (GPU, GPU_AUDIO))
    host = QemuHost(root=fake.root, natural_drivers=fake.natural_drivers)
    monkeypatch.setattr(process, "start_daemon", host.start_daemon)
    add_bridge(host.root, "br0")
    host.path("/sys/kernel/mm/ksm/run").write_text("0")  # as down writes it back
    host.path(HUGE_POOL).mkdir(parents=True)
    for name in ("nr_hugepages", "free_hugepages", "resv_hugepages"):
        host.path(f"{HUGE_POOL}/{name}").write_text("0")  # as down writes it back
    host.path("/proc/meminfo").write_text("MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n")
    return host, Places(run_root=where / "run", state_root=where / "state"), every_kind(where)


def test_fake_after_up_is_killed_at_any_crash_point_the_next_up_cleans_up_and_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed = []
    for point, where in points(tmp_path):
        host, places, spec = fresh_host(where, monkeypatch)
        before = snapshot(host.root)
        label = killed(partial(lifecycle.up, spec, Path("spec.toml"), host, places, say=quiet), point)
        if label is None:
            break
        passed.append(label)
        outcome = lifecycle.up(spec, Path("spec.toml"), host, places, say=quiet)
        assert outcome in (lifecycle.Outcome.STARTED, lifecycle.Outcome.UP_TO_DATE), label
        assert len([pid for pid in host.process_ids() if host.process_argv(pid)]) == 1, label  # one qemu
        assert ending.down(spec.name, host, places, timeout=1, force=False, say=quiet) is not None
        assert snapshot(host.root) == before, f"after a kill at {point}: {label}"
        assert list((where / "run").iterdir()) == [where / "run" / ".locks"], label
    kinds = ["run/.fake", "after creating the run directory", "before qemu-img create", "before ip tuntap add",
             "before ip link set", "before write /sys/kernel/mm/ksm/run", "before chown", "journal.log appended",
             "nr_hugepages", "before launching qemu", "after launching qemu"]
    assert [kind for kind in kinds if not any(kind in label for label in passed)] == []


def test_fake_after_down_is_killed_at_any_crash_point_the_next_down_gives_everything_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed = []
    for point, where in points(tmp_path):
        host, places, spec = fresh_host(where, monkeypatch)
        before = snapshot(host.root)
        lifecycle.up(spec, Path("spec.toml"), host, places, say=quiet)
        label = killed(partial(ending.down, spec.name, host, places, timeout=1, force=False, say=quiet), point)
        if label is None:
            break
        passed.append(label)
        ending.down(spec.name, host, places, timeout=1, force=False, say=quiet)
        assert snapshot(host.root) == before, f"after a kill at {point}: {label}"
        assert list((where / "run").iterdir()) == [where / "run" / ".locks"], label
    for kind in ("before stopping", "nr_hugepages", "ksm/run", "tuntap", "driver_override", "journal.log"):
        assert any(kind in label for label in passed), (kind, passed)
