"""Exports checked by the tools that consume them: libvirt's own schema and systemd's verifier."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SPECS = sorted((REPO / "specs").glob("*.toml"))


def vmrun_export(spec: Path, export_format: str, output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmrun", "export", str(spec), "--format", export_format, "-o", str(output)],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("spec", SPECS, ids=lambda path: path.stem)
def test_libvirt_export_validates_against_libvirts_schema(spec: Path, tmp_path: Path) -> None:
    xml = tmp_path / f"{spec.stem}.xml"
    assert vmrun_export(spec, "libvirt", xml).returncode == 0
    result = subprocess.run(["virt-xml-validate", str(xml), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("spec", SPECS, ids=lambda path: path.stem)
def test_systemd_export_passes_systemd_analyze_verify(spec: Path, tmp_path: Path) -> None:
    unit = tmp_path / f"vmrun-{spec.stem}.service"
    assert vmrun_export(spec, "systemd", unit).returncode == 0
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and str(unit) not in result.stderr, result.stderr
