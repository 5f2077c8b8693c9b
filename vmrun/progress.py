"""How stages report progress: a callable that takes one line (the CLI prints it to stderr), and progress bars
for what moves bytes."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import IO, Any

Say = Callable[[str], None]


class _Bars:
    """One rich Progress for the transfers under way in this process, a line each: `up DIR` fetches bases in
    parallel, and a Progress per transfer would each redraw the terminal's last line, over one another. It
    starts with the first transfer and stops with the last; rich is imported only then."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: Any = None
        self._shown = 0

    def add(self, label: str, stream: IO[str]) -> Any:
        with self._lock:
            if self._progress is None:
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
                    TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=Console(file=stream), transient=True,
                )
                self._progress.start()
            self._shown += 1
            return self._progress.add_task(label, total=None)

    def show(self, task: Any, done: int, total: int | None, label: str | None) -> None:
        self._progress.update(task, completed=done, total=total, **({"description": label} if label else {}))

    def remove(self, task: Any) -> None:
        with self._lock:
            self._shown -= 1
            if self._shown:
                self._progress.remove_task(task)
            else:  # the last one's line is drawn once more as it ends, then cleared with the rest
                self._progress.stop()
                self._progress = None


_BARS = _Bars()


class Meter:
    """A transfer's line among the progress bars on a terminal (bytes, rate, time left); nothing when the
    stream (stderr) is not a terminal: a script or a log gets the lines that say, not a bar."""

    def __init__(self, label: str, *, stream: IO[str] | None = None) -> None:
        self._label = label
        self._stream = stream
        self._task: Any = None

    def __enter__(self) -> Meter:
        stream = self._stream or sys.stderr
        if stream.isatty():
            self._task = _BARS.add(self._label, stream)
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            _BARS.remove(self._task)

    def show(self, done: int, total: int | None, *, label: str | None = None) -> None:
        """Where the transfer stands; a new label when it moves on to something else."""
        if self._task is not None:
            _BARS.show(self._task, done, total, label)
