"""The progress bar on a terminal, and none elsewhere."""

from __future__ import annotations

import io

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
