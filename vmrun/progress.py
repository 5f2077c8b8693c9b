"""How stages report progress: a callable that takes one line (the CLI prints it to stderr), and a progress
bar for what moves bytes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any

Say = Callable[[str], None]


class Meter:
    """A progress bar on a terminal (bytes, rate, time left); nothing when the stream (stderr) is not a
    terminal, and rich is imported only then: a script or a log gets the lines that say, not a bar."""

    def __init__(self, label: str, *, stream: IO[str] | None = None) -> None:
        self._progress: Any = None
        stream = stream or sys.stderr
        if stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn(), console=Console(file=stream), transient=True,
            )
            self._task = self._progress.add_task(label, total=None)

    def __enter__(self) -> Meter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def show(self, done: int, total: int | None, *, label: str | None = None) -> None:
        """Where the transfer stands; a new label when it moves on to something else."""
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total,
                                  **({"description": label} if label is not None else {}))
