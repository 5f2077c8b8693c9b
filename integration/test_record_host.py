"""integration/record-host: a recorded tree makes vmrun see this host as it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def host_check(*root: str) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-m", "vmrun", *root, "host", "check", "--json"],
                            capture_output=True, text=True, timeout=60, check=True)
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_recorded_tree_answers_host_check_like_the_host(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "integration/record-host"), str(tmp_path / "rec")], check=True)
    live, replayed = host_check(), host_check("--host-root", str(tmp_path / "rec"))
    for key in ("kvm", "vhost_net", "tun", "iommu_groups"):
        assert replayed[key] == live[key], key
    assert (tmp_path / "rec/sys/class/net/lo").is_symlink()
