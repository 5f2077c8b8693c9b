"""Fixtures shared by tests/ and integration/."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# A test that runs `python -m vmrun` from another directory must run this checkout's vmrun, not the one the
# interpreter has installed (a venv shared by several checkouts has one of them installed).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent),
                                                         os.environ.get("PYTHONPATH")]))


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A directory any user can traverse and write: qemu's dropped user must reach shares, and
    pytest's own tmp root is private to root."""
    base = Path(tempfile.mkdtemp(prefix="vmrun-test-"))
    base.chmod(0o777)
    yield base
    shutil.rmtree(base)
