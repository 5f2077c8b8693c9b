"""The same VM as a systemd unit that runs `vmrun up` and `vmrun down`. Pure: text in, text out."""

from __future__ import annotations

import shlex
from pathlib import Path

from vmrun.export import Export
from vmrun.spec.model import Spec


def systemd_unit(spec: Spec, *, spec_path: Path, vmrun: Path, run_dir: Path) -> Export:
    """A unit that brings the VM up at boot and supervises its qemu through the pidfile."""
    post_boot = sum(hook.timeout for hook in spec.post_boot)
    start_timeout = int(spec.agent.timeout + post_boot + 120)
    up = shlex.join([str(vmrun), "--run-dir", str(run_dir.parent), "up", str(spec_path)])
    down = shlex.join([str(vmrun), "--run-dir", str(run_dir.parent), "down", spec.name, "--timeout", "60"])
    description = f"vmrun VM {spec.name}" + (f" ({spec.description})" if spec.description else "")
    text = f"""\
[Unit]
Description={description}
Documentation=file://{spec_path}
After=network-online.target
Wants=network-online.target

[Service]
# vmrun up returns once qemu has daemonized and the post-boot steps are done; systemd then
# supervises qemu through its pidfile and restarts the VM when qemu dies.
Type=forking
PIDFile={run_dir / "qemu.pid"}
ExecStart={up}
ExecStop={down}
TimeoutStartSec={start_timeout}
TimeoutStopSec=90
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""
    return Export(text)
