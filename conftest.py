"""Fixtures shared by tests/ and integration/."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A directory any user can traverse and write: qemu's dropped user must reach shares, and
    pytest's own tmp root is private to root."""
    base = Path(tempfile.mkdtemp(prefix="vmrun-test-"))
    base.chmod(0o777)
    yield base
    shutil.rmtree(base)
