"""What preflight finds and does: check results, host steps, and changes that carry their own undo.

A change's undo steps are worked out at planning time from what the host had before (the previous
driver, owner or value), so undoing needs nothing but the recorded change, even in a later `down`.
"""

from __future__ import annotations

import enum
import shlex
from collections.abc import Iterator
from typing import Any

import attrs

from vmrun.host.system import Host, HostCommandError
from vmrun.record import Record

DEVICE_WAIT = 5.0  # seconds for a device node (/dev/vfio/N) to appear after binding


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@attrs.frozen(repr=False)
class Finding(Record):
    name: str
    status: Status
    message: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": str(self.status), "message": self.message}


def ok_finding(name: str, message: str) -> Finding:
    return Finding(name, Status.OK, message)


def warn_finding(name: str, message: str) -> Finding:
    return Finding(name, Status.WARN, message)


def fail_finding(name: str, message: str) -> Finding:
    return Finding(name, Status.FAIL, message)


class Action(enum.StrEnum):
    WRITE = "write"  # a sysfs value
    CHOWN = "chown"  # a device node's owner: a user name, or "uid:gid" when restoring one
    MKDIR = "mkdir"
    RMDIR = "rmdir"
    REMOVE = "remove"  # a file this preflight created
    RUN = "run"  # a host tool: ip, qemu-img, useradd


@attrs.frozen(repr=False)
class Step(Record):
    """One host operation. path is the host path acted on, as seen without --host-root; value is what is
    written, the new owner, or the command line."""

    action: Action
    path: str
    value: str = ""
    argv: tuple[str, ...] = ()

    @classmethod
    def command(cls, path: str, *argv: str) -> Step:
        return cls(Action.RUN, path, shlex.join(argv), argv)

    def to_json(self) -> dict[str, str]:
        return {"action": str(self.action), "path": self.path, "value": self.value}

    def to_record(self) -> dict[str, Any]:
        return {**self.to_json(), **({"argv": list(self.argv)} if self.argv else {})}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Step:
        return cls(Action(data["action"]), data["path"], data["value"], tuple(data.get("argv", ())))

    def __str__(self) -> str:
        return self.value if self.action is Action.RUN else f"{self.action} {self.path} {self.value}".rstrip()


HUGEPAGES_TOTAL = "/nr_hugepages"


def perform(step: Step, host: Host) -> None:
    """Raises OSError or HostCommandError when the host refuses."""
    if step.action is Action.WRITE and step.path.endswith(HUGEPAGES_TOTAL):
        _grow_pool(step, host)
    elif step.action is Action.WRITE:
        host.write(step.path, step.value)
    elif step.action is Action.CHOWN:
        # The kernel creates /dev/vfio/N asynchronously after the bind.
        if not host.wait_for(step.path, DEVICE_WAIT):
            raise HostCommandError(f"{step.path} did not appear within {DEVICE_WAIT:g} s")
        host.chown(step.path, step.value)
    elif step.action is Action.MKDIR:
        host.make_dir(step.path)
    elif step.action is Action.RMDIR:
        host.remove_dir(step.path)
    elif step.action is Action.REMOVE:
        host.remove_file(step.path)
    else:
        host.run(list(step.argv))


def _grow_pool(step: Step, host: Host) -> None:
    """The kernel takes a larger nr_hugepages without an error and finds what free memory it can: fewer
    pages than asked is a refusal, and the pool goes back to where it was."""
    before = host.read(step.path)
    host.write(step.path, step.value)
    got = int(host.read(step.path) or 0)
    if got < int(step.value):
        if before is not None:
            host.write(step.path, before)
        raise HostCommandError(f"the kernel found memory for only {got} of {step.value} huge pages")


class OnDown(enum.StrEnum):
    """What `down` does with a change; a failed preflight's rollback undoes every kind."""

    UNDO = "undo"
    KEEP = "keep"  # a disk image (user data) and its directories, a system user
    SHARED_KSM = "shared-ksm"  # KSM: restored only once no other running VM wants it
    # A huge page pool: shrunk by this VM's pages alone, the pages other VMs reserved there stay.
    SHARED_HUGEPAGES = "shared-hugepages"


@attrs.frozen(repr=False)
class Change(Record):
    step: Step
    undo: tuple[Step, ...] = ()
    on_down: OnDown = OnDown.UNDO
    # SHARED_HUGEPAGES: the pages this change adds to the pool, on top of the undo's value (the pool without
    # any vmrun VM's pages); each down writes that value plus the pages of the VMs that still hold theirs.
    pages: int = 0

    def to_json(self) -> dict[str, str]:
        """The contract's plan entry: {action, path, value}."""
        return self.step.to_json()


@attrs.frozen(repr=False)
class AppliedChange(Record):
    """A journal entry: a change preflight is about to make (done False) or made (done True).

    Its JSON, kept in the VM's state file, is all `down` needs to undo it. An entry never marked done
    may or may not have reached the host (vmrun died in between), so its undo is tried but may fail.
    """

    change: Change
    done: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            **self.change.step.to_record(),
            "undo": [step.to_record() for step in self.change.undo],
            "on_down": str(self.change.on_down),
            **({"pages": self.change.pages} if self.change.pages else {}),
            "done": self.done,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AppliedChange:
        change = Change(
            Step.from_record(data),
            tuple(Step.from_record(step) for step in data["undo"]),
            OnDown(data["on_down"]),
            int(data.get("pages", 0)),
        )
        return cls(change, done=bool(data.get("done", True)))


# What each check yields: its results and the changes it needs, in the order they must be applied.
Found = Iterator[Finding | Change]
