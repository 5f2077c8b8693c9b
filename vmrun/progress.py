"""How stages report progress: a callable that takes one line (the CLI prints it to stderr)."""

from __future__ import annotations

from collections.abc import Callable

Say = Callable[[str], None]
