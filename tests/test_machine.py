"""When a qemu counts as gone: the moment `down` and a failed `up` may undo the taps and devices it held."""

from __future__ import annotations

import shutil
from pathlib import Path

from vmrun.host import Host
from vmrun.machine import is_gone

from .fakehost import put

PID = 4242


def qemu_process(root: Path, state: str, *, threads: tuple[int, ...]) -> None:
    put(root, f"/proc/{PID}/stat", f"{PID} (qemu-system-x86) {state} 1 {PID} {PID} 0 -1")
    put(root, f"/proc/{PID}/cmdline", "" if state == "Z" else "qemu\0-name\0guest=db,process=vmrun-db\0")
    for thread in threads:
        put(root, f"/proc/{PID}/task/{thread}/stat", f"{thread} (qemu-system-x86) {state}")


def test_a_zombie_qemu_is_gone_once_its_other_threads_have_ended_on_a_fake_host(tmp_path: Path) -> None:
    """The main thread turns zombie first; another thread may still hold the taps (a real qemu killed
    with SIGKILL does so about one time in three, and `ip tuntap del` then fails)."""
    host = Host(root=tmp_path)
    qemu_process(tmp_path, "Z", threads=(PID, PID + 8))
    assert not is_gone(host, PID, "db")
    shutil.rmtree(tmp_path / f"proc/{PID}/task/{PID + 8}")
    assert is_gone(host, PID, "db")


def test_a_running_qemu_is_not_gone_and_a_missing_or_other_process_is_on_a_fake_host(tmp_path: Path) -> None:
    host = Host(root=tmp_path)
    qemu_process(tmp_path, "S", threads=(PID, PID + 8))
    assert not is_gone(host, PID, "db")
    assert is_gone(host, PID, "web")  # the pid now runs another VM's qemu
    assert is_gone(host, PID + 1, "db")
