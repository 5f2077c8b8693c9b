"""What a host tells without changing it and without attrs: paths under a root, /proc's processes, KSM's
counters. `status` reads the host through this alone (a ReadOnlyHost), so it pays neither attrs' import nor
the rest of Host."""

from __future__ import annotations

import os
from pathlib import Path

HOST_TREES = ("/sys", "/dev", "/proc", "/etc/passwd", "/etc/group")
PAGE_SIZE = 4096
KSM_DIR = "/sys/kernel/mm/ksm"
KSM_RUN = f"{KSM_DIR}/run"


class HostView:
    """Paths are host paths as the kernel names them; the host's own trees live under ``root``."""

    __slots__ = ()
    root: Path

    def path(self, host_path: str | Path) -> Path:
        """Where a host path lives on this machine."""
        path = Path(host_path)
        if any(path.is_relative_to(tree) for tree in HOST_TREES):
            return self.root / path.relative_to("/")
        return path

    def read(self, host_path: str | Path) -> str | None:
        try:
            return self.path(host_path).read_text().strip()
        except OSError:
            return None

    def listdir(self, host_path: str | Path) -> list[str]:
        try:
            return sorted(os.listdir(self.path(host_path)))
        except OSError:
            return []

    def process_ids(self) -> list[int]:
        return [int(name) for name in self.listdir("/proc") if name.isdigit()]

    def process_argv(self, pid: int) -> list[str] | None:
        """A process's arguments; None when there is no such process, empty while it exits."""
        try:
            raw = self.path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]

    def process_cmdline(self, pid: int) -> str | None:
        """A process's command line, arguments joined by spaces; None when there is no such process."""
        argv = self.process_argv(pid)
        return None if argv is None else " ".join(argv)

    def process_state(self, pid: int) -> str | None:
        """The one-letter state of /proc/PID/stat ("R", "S", "Z", ...); None when there is no such process."""
        try:
            stat_line = self.path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        after_name = stat_line.rpartition(")")[2].split()  # the process name may hold spaces and parentheses
        return after_name[0] if after_name else None

    def is_root_user(self) -> bool:
        return os.geteuid() == 0

    def ksm_stats(self) -> dict[str, int] | None:
        """KSM's run state and counters, and the bytes it saves; None when the kernel has no KSM."""
        run = self.read(KSM_RUN)
        if run is None:
            return None
        counters = {name: int(self.read(f"{KSM_DIR}/{name}") or 0)
                    for name in ("pages_shared", "pages_sharing")}
        return {"run": int(run), **counters, "bytes_saved": counters["pages_sharing"] * PAGE_SIZE}


class ReadOnlyHost(HostView):
    __slots__ = ("root",)

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root
