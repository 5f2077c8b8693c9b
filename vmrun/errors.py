"""The one error tree: every mistake a user can make ends in one of these.

Only ``vmrun.cli.main`` catches them; it prints ``str(error)`` (and ``error.hint``)
and exits with ``error.exit_code``. Exit code 1 is left to bugs in vmrun.
"""

from __future__ import annotations

from collections.abc import Iterable


class Problem:
    """One mistake, located by its path inside the spec (``nics[0].queues``).

    A plain class, not attrs: every command imports this module, and `status` must not pay attrs' import."""

    __slots__ = ("hint", "message", "path")

    def __init__(self, path: str, message: str, hint: str | None = None) -> None:
        self.path, self.message, self.hint = path, message, hint

    def _fields(self) -> tuple[str, str, str | None]:
        return self.path, self.message, self.hint

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"Problem(path={self.path!r}, message={self.message!r}, hint={self.hint!r})"

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} (hint: {self.hint})" if self.hint else text


class VmrunError(Exception):
    exit_code = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def lines(self) -> list[str]:
        """What the CLI prints: one line per problem."""
        return [str(self)]


class UsageError(VmrunError):
    """A command used wrongly: unknown VM, VM already running, ..."""

    exit_code = 2


class ConfigurationDiffers(UsageError):
    """`up` without --restart: the VM runs with another configuration than its spec gives now."""


class SpecError(VmrunError):
    """The spec is invalid; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, source: str, problems: Iterable[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {problem}" for problem in self.problems]


class PreflightError(VmrunError):
    """The host refused: a check failed or a host change could not be applied."""

    exit_code = 3


class LaunchError(VmrunError):
    """qemu failed to start or died during start-up."""

    exit_code = 4


class FetchError(VmrunError):
    """A base image could not be had: a failed or truncated transfer, a wrong digest, a full disk."""

    exit_code = 4


class AgentError(VmrunError):
    """The guest agent did not answer, or a guest command failed."""

    exit_code = 5


class HookError(AgentError):
    """A post-boot step (built-in ethtool step or a user hook) failed."""
