"""The progress bar on a terminal, and none elsewhere."""

from __future__ import annotations

import io
import re
import sys
import threading
import time

import pytest

from vmrun.progress import Meter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_meter_draws_its_label_and_bytes_on_a_terminal_and_can_change_its_label() -> None:
    terminal = Terminal()
    with Meter("disks", stream=terminal) as meter:
        meter.show(2 * 2**20, 4 * 2**20)
        meter.show(3 * 2**20, 8 * 2**20, label="RAM")
    drawn = terminal.getvalue()
    assert "RAM" in drawn and "3.1/8.4 MB" in drawn


def test_a_meter_draws_nothing_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    with Meter("disks", stream=stream) as meter:
        meter.show(1, 2)
    assert stream.getvalue() == ""


def test_a_label_with_brackets_shows_as_it_is() -> None:
    """rich reads [...] in a label as markup: "[/]" in a URL was a traceback on a terminal."""
    terminal = Terminal()
    with Meter("a[/]b[bold]c.qcow2", stream=terminal) as meter:
        meter.show(1, 2)
    assert "a[/]b[bold]c.qcow2" in terminal.getvalue()


def meters_at_once(labels: list[str]) -> None:
    """A download per label in its own thread, as `up DIR` fetches bases, all under way for a while."""
    together = threading.Barrier(len(labels))

    def download(index: int, label: str) -> None:
        with Meter(label) as meter:
            together.wait(timeout=10)
            meter.show(index + 1, 4)
            time.sleep(0.5)  # rich redraws 10 times a second
            together.wait(timeout=10)

    threads = [threading.Thread(target=download, args=item) for item in enumerate(labels)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_two_downloads_at_once_get_a_progress_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not one line that each download redraws in turn."""
    terminal = io.StringIO()
    monkeypatch.setattr(terminal, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys, "stderr", terminal)
    meters_at_once(["first.qcow2", "second.qcow2"])
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    # A line each, one under the other in the same redraw, whichever started first.
    first, second = (rf"{label}\.qcow2 [^\r\n]*{done}/4 bytes[^\r\n]*" for label, done in (("first", 1), ("second", 2)))
    assert re.search(f"{first}\n{second}|{second}\n{first}", shown), repr(shown[-600:])


def test_no_progress_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    meters_at_once(["first.qcow2", "second.qcow2"])
    assert log.getvalue() == ""
