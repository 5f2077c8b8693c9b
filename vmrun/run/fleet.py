"""Many VMs in one command, as `docker compose up` does: specs and directories of specs, in parallel.

Each VM runs in its own thread with its own lock; one VM's failure does not stop the others, and the
command exits with the worst code. Progress lines carry the VM's name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from vmrun.errors import ConfigurationDiffers, VmrunError
from vmrun.progress import Say
from vmrun.record import Record
from vmrun.signals import for_workers, shielded, sigterm_interrupts

if TYPE_CHECKING:
    from concurrent.futures import Future

INTERRUPTED = 130
BUG = 1


@attrs.frozen(repr=False)
class Fate(Record):
    """What became of one VM: its name (or spec path, when the spec is invalid), outcome and exit code.
    For `--json`, also the outcome as one word (result: the outcome itself when it is one already) and
    the one-line errors (and hint) that told a failure."""

    name: str
    outcome: str
    exit_code: int = 0
    result: str = attrs.field(default=attrs.Factory(lambda fate: fate.outcome, takes_self=True))
    errors: tuple[str, ...] = ()
    hint: str | None = None
    spec: str | None = None  # the spec file it came from, when one was read

    @classmethod
    def of_error(cls, label: str, outcome: str, error: VmrunError, *, result: str = "failed") -> Fate:
        return cls(label, outcome, error.exit_code, result=result, errors=tuple(error.lines()), hint=error.hint)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "result": self.result, "outcome": self.outcome,
                "exit_code": self.exit_code, "errors": list(self.errors), "hint": self.hint}


def worst(codes: Sequence[int]) -> int:
    """The exit code of many: an interruption, then a bug in vmrun, then the highest."""
    for special in (INTERRUPTED, BUG):
        if special in codes:
            return special
    return max(codes, default=0)


Task = Callable[[Say, threading.Event], Fate]


def run_all(tasks: Sequence[tuple[str, Task]], *, jobs: int | None, say: Say,
            report: Callable[[str, Exception], None]) -> list[Fate]:
    """Run each (label, task) in parallel, up to jobs at once; a VmrunError becomes that VM's fate, and so
    does any other exception (a bug in vmrun, exit 1): one VM's bug does not hide what became of the others.

    Ctrl-C or SIGTERM sets `interrupted`, which the tasks watch; every task is then waited for, so
    each can roll back what it started."""
    interrupted = threading.Event()
    prefix = len(tasks) > 1

    def guarded(label: str, task: Task) -> Fate:
        own_say: Say = (lambda line: say(f"{label}: {line}")) if prefix else say
        try:
            return task(own_say, interrupted)
        except VmrunError as error:
            report(label if prefix else "", error)
            refused = isinstance(error, ConfigurationDiffers)
            return Fate.of_error(label, f"failed (exit {error.exit_code})", error,
                                 result="refused" if refused else "failed")
        except KeyboardInterrupt:
            return Fate(label, "interrupted, rolled back", INTERRUPTED, result="interrupted")
        except Exception as bug:  # noqa: BLE001 - reported as a bug, and the other VMs go on
            report(label if prefix else "", bug)
            return Fate(label, "failed (a bug in vmrun)", BUG, result="failed",
                        errors=(f"internal error: {type(bug).__name__}: {bug}",))

    if len(tasks) <= 1:
        return [guarded(label, task) for label, task in tasks]
    from concurrent.futures import ThreadPoolExecutor  # with logging, ~5 ms that one VM does without

    with sigterm_interrupts(), ThreadPoolExecutor(max_workers=jobs or len(tasks), initializer=for_workers) as pool:
        futures: list[Future[Fate]] = [pool.submit(guarded, label, task) for label, task in tasks]
        try:
            return [future.result() for future in futures]
        except KeyboardInterrupt:
            with shielded():  # before the tasks hear of it: each rollback may take a second Ctrl-C
                interrupted.set()
                say("interrupted: rolling back the VMs still starting")
                for future in futures:
                    future.cancel()
                return [future.result() if not future.cancelled()
                        else Fate(label, "not started", INTERRUPTED, result="interrupted")
                        for (label, _), future in zip(tasks, futures, strict=True)]


def summary(fates: Sequence[Fate]) -> str:
    return f"{len(fates)} VMs: " + ", ".join(f"{fate.name} {fate.outcome}" for fate in fates)
