"""`vmrun logs`: the console log of the running VM or of its last run, its last lines, and -f across a restart."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from vmrun.cli.main import main
from vmrun.host.system import Host
from vmrun.qemu.console import follow_log, tail_offset
from vmrun.run import ending
from vmrun.state.locations import Places
from vmrun.state.vmstate import VmState, create_run_dir


@pytest.mark.parametrize(("text", "lines", "expected"), [
    (b"a\nb\nc\n", 2, b"b\nc\n"),
    (b"a\nb\nc", 2, b"b\nc"),  # a last line without its newline
    (b"a\nb\n", 5, b"a\nb\n"),
    (b"a\nb\n", 0, b""),
    (b"", 3, b""),
    (b"x" * 200_000 + b"\nlast\n", 1, b"last\n"),  # across blocks
    (b"\n".join(b"%d" % n for n in range(50_000)) + b"\n", 2, b"49998\n49999\n"),
])
def test_tail_starts_at_the_last_n_lines(text: bytes, lines: int, expected: bytes) -> None:
    log = io.BytesIO(text)
    assert text[tail_offset(log, lines):] == expected


@pytest.fixture
def places(tmp_path: Path) -> Places:
    return Places(run_root=tmp_path / "run", state_root=tmp_path / "state", image_cache=tmp_path / "cache")


def logs(capsys: pytest.CaptureFixture[str], places: Places, *args: str) -> tuple[int, str, list[str]]:
    exit_code = main(["--run-dir", str(places.run_root), "--state-dir", str(places.state_root), "logs", *args])
    out, err = capsys.readouterr()
    return exit_code, out, err.splitlines()


def test_the_end_of_a_run_keeps_its_console_log_for_logs(places: Places, capsys: pytest.CaptureFixture[str]) -> None:
    paths = places.of("web")
    create_run_dir(paths, VmState(name="web", spec_path="web.toml", argv=("qemu",), accel="tcg", accel_reason=""))
    paths.console_log.write_bytes(b"booting\nlogin: \n")
    ending._end_run(Host(root=Path("/")), places, "web", None, print)
    assert not paths.run_dir.exists()
    exit_code, out, lines = logs(capsys, places, "web")
    assert (exit_code, out, lines) == (0, "booting\nlogin: \n", ["vmrun: web is not running: the console log of its "
                                                                 "last run"])
    assert logs(capsys, places, "web", "--tail", "1")[1] == "login: \n"


def test_a_console_log_that_is_a_link_is_not_kept(places: Places, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    paths = places.of("web")
    paths.run_dir.mkdir(parents=True)
    paths.console_log.symlink_to(secret)
    ending._keep_console_log(paths, print)
    assert not paths.last_console_log.exists()


def test_logs_of_a_vm_that_never_ran_is_exit_2(places: Places, capsys: pytest.CaptureFixture[str]) -> None:
    exit_code, _, lines = logs(capsys, places, "web")
    assert (exit_code, lines[0]) == (2, f"vmrun: error: no console log for web: it has not run under {places.run_root}")


def test_follow_goes_on_with_the_log_of_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "run/web/console.log"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"first run\n")
    out = io.BytesIO()
    done = threading.Event()
    follower = threading.Thread(target=follow_log, args=(path, path.open("rb"), out), kwargs={"stop": done.is_set})
    follower.start()
    try:
        wait_for(lambda: out.getvalue() == b"first run\n")
        with path.open("ab") as log:
            log.write(b"shutting down\n")
        wait_for(lambda: out.getvalue().endswith(b"shutting down\n"))
        path.unlink()  # down removes the run dir
        path.parent.rmdir()
        time.sleep(0.3)
        path.parent.mkdir()  # the next up
        path.write_bytes(b"second run\n")
        wait_for(lambda: out.getvalue() == b"first run\nshutting down\nsecond run\n")
    finally:
        done.set()
        follower.join(timeout=5)
    assert not follower.is_alive()


def wait_for(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_logs_refuses_a_negative_tail(places: Places, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        logs(capsys, places, "web", "--tail", "-1")
    assert exited.value.code == 2
    assert os.path.exists(places.run_root) is False
