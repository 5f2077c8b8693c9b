"""The run dir must hold qemu's sockets: preflight checks it before any host change is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmrun.host.system import Host
from vmrun.preflight.plan import PreflightRefused
from vmrun.run.lifecycle import prepare
from vmrun.state.locations import Places

from .fakehost import FakeHost, put
from .test_preflight import GPU, fake_host, messages, plan_for, vfio_spec


def on_9p(host: FakeHost, directory: Path) -> None:
    """The tree's kernel mounts a 9p share on directory (as a VM's view of its host's files often is)."""
    put(host.root, "/proc/self/mountinfo", "22 1 254:1 / / rw - ext4 /dev/vda1 rw\n"
                                           f"41 22 0:40 / {directory} rw - 9p hostshare rw,trans=virtio\n")


def test_fake_run_dir_on_9p_is_refused_naming_its_file_system(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    run_root = tmp_path / "run"
    run_root.mkdir()
    assert messages(plan_for(vfio_spec(), host, run_dir=run_root / "fake")) == []
    on_9p(host, run_root)
    refusal = f"cannot create sockets in {run_root} (file system 9p): use --run-dir on a local file system such as /run"
    assert messages(plan_for(vfio_spec(), host, run_dir=run_root / "fake")) == [refusal]
    # A run root not made yet is judged by the directory it will be made in.
    assert messages(plan_for(vfio_spec(), host, run_dir=run_root / "vmrun" / "fake")) == [refusal]


def test_fake_up_refuses_a_run_dir_on_9p_before_any_host_change(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU,))
    places = Places(run_root=tmp_path / "run", state_root=tmp_path / "state")
    places.run_root.mkdir()
    on_9p(host, places.run_root)
    spec = vfio_spec("03:00.0")
    with pytest.raises(PreflightRefused) as refused:
        prepare(spec, tmp_path / "fake.toml", host, places, show=lambda plan: None, say=lambda line: None)
    assert refused.value.exit_code == 3
    assert (f"preflight: run dir: cannot create sockets in {places.run_root} (file system 9p): use --run-dir on a "
            "local file system such as /run") in refused.value.lines()
    assert host.writes == [] and not places.of("fake").run_dir.exists()


def test_a_socket_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    assert Host().socket_refusal(tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    assert Host().socket_refusal(tmp_path / "missing") == "No such file or directory"
