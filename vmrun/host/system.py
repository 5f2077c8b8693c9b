"""The one door to the host: sysfs, /dev, /proc and processes, rooted at a configurable root.

No policy lives here: it reads and writes what it is told. ``Host(root=tmp_path)`` lets
every caller run against a fake host tree.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import resource
import stat
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import attrs

from vmrun.host.dirs import default_cache_root
from vmrun.host.view import HostView
from vmrun.record import Record

_XATTR_PROBE = "user.vmrun.probe"
CPU_DIR = "/sys/devices/system/cpu"
NODE_DIR = "/sys/devices/system/node"
HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"


def parse_cpu_list(text: str | None) -> frozenset[int]:
    """The kernel's list format ("0-3,8,10-11"), as in .../cpu/online and Cpus_allowed_list."""
    numbers: set[int] = set()
    for part in (text or "").strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        numbers.update(range(int(first), int(last or first) + 1))
    return frozenset(numbers)


def format_cpu_list(numbers: frozenset[int] | set[int]) -> str:
    """The kernel's list format, runs collapsed, so messages read like sysfs."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def hugepage_pool(page_bytes: int, node: int | None = None) -> str:
    """The sysfs directory of the pool of one huge page size, system-wide or on one NUMA node."""
    where = HUGEPAGES_DIR if node is None else f"{NODE_DIR}/node{node}/hugepages"
    return f"{where}/hugepages-{page_bytes // 1024}kB"


class HostCommandError(Exception):
    """A host tool failed; preflight turns this into a rollback and a PreflightError."""


@attrs.frozen(repr=False)
class QemuCapabilities(Record):
    version: str
    has_run_with_user: bool  # -run-with takes user= (QEMU >= 9.1; 8.1-9.0 have -run-with without it)
    has_runas: bool  # removed in QEMU 10.0
    has_sandbox: bool


def parse_qemu_help(help_text: str) -> QemuCapabilities:
    """What `qemu -help` offers. Each option's text runs from its own line over the indented lines below
    it: QEMU 9.1 lists user= in -run-with's first line, later layouts on a continuation line."""
    options: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in help_text.splitlines():
        if line.startswith("-"):
            current = options.setdefault(line.split()[0], [])
            current.append(line)
        elif current is not None and line[:1].isspace():
            current.append(line)
        else:
            current = None
    version = re.search(r"version (\S+)", help_text)
    return QemuCapabilities(
        version=version.group(1) if version else "unknown",
        has_run_with_user=re.search(r"\buser=", "\n".join(options.get("-run-with", []))) is not None,
        has_runas="-runas" in options,
        has_sandbox="-sandbox" in options,
    )


@attrs.frozen(repr=False)
class User(Record):
    name: str
    uid: int
    gid: int


@attrs.frozen(repr=False)
class Host(Record, HostView):
    """Paths are host paths as the kernel names them ("/sys/bus/pci/...").

    The host's own trees (sysfs, /dev, /proc, the user database) live under ``root``; the files a spec
    names (disk images, shares, kernels) stay where they are, as a fake host tree does not hold them.
    """

    root: Path = Path("/")

    @property
    def is_fake(self) -> bool:
        return self.root != Path("/")

    def exists(self, host_path: str | Path) -> bool:
        return self.path(host_path).exists()

    def read_bytes(self, host_path: str | Path, size: int) -> bytes | None:
        """The first size bytes of a binary file (a PCI function's config space)."""
        try:
            with open(self.path(host_path), "rb") as file:
                return file.read(size)
        except OSError:
            return None

    def link_name(self, host_path: str | Path) -> str | None:
        """The last component of a symlink's target: a sysfs link's driver, group or bridge name."""
        try:
            return Path(os.readlink(self.path(host_path))).name
        except OSError:
            return None

    def resolve(self, host_path: str | Path) -> str | None:
        """The host path a chain of links leads to; None when it leads nowhere (or out of a fake tree)."""
        located = self.path(host_path)
        try:
            real = located.resolve(strict=True)
        except OSError:
            return None
        if located == Path(host_path):
            return str(real)
        root = self.root.resolve()
        return "/" + str(real.relative_to(root)) if real.is_relative_to(root) else None

    def kind(self, host_path: str | Path) -> str | None:
        """"file", "directory", "block device" or "other" (links followed); None when missing."""
        try:
            mode = self.path(host_path).stat().st_mode
        except OSError:
            return None
        for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISBLK, "block device")):
            if test(mode):
                return name
        return "other"

    def device_number(self, host_path: str | Path) -> str | None:
        """"major:minor" of a block or character device (links followed), as /sys/dev names it; None otherwise."""
        try:
            info = self.path(host_path).stat()
        except OSError:
            return None
        if not (stat.S_ISBLK(info.st_mode) or stat.S_ISCHR(info.st_mode)):
            return None
        return f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"

    def file_info(self, host_path: str | Path) -> os.stat_result | None:
        """Owner, group and mode of the path itself (a link is not followed); None when missing."""
        try:
            return os.lstat(self.path(host_path))
        except OSError:
            return None

    def can_open(self, host_path: str | Path) -> bool:
        """Readable and writable by this process, as qemu needs /dev/kvm, /dev/vhost-net and /dev/vfio/N."""
        return os.access(self.path(host_path), os.R_OK | os.W_OK)

    def wait_for(self, host_path: str | Path, timeout: float) -> bool:
        """Whether the path exists within timeout seconds (a device node the kernel creates asynchronously)."""
        deadline = time.monotonic() + timeout
        while not self.exists(host_path):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def tap_holders(self, tap: str) -> list[tuple[int, str]]:
        """The processes (pid, command name) that have tap open: the kernel names a tun file's device in its
        fdinfo. Only root sees every process's files; a process that ends meanwhile is skipped."""
        holders = []
        for pid in self.process_ids():
            for fd in self.listdir(f"/proc/{pid}/fd"):
                if self.link_name(f"/proc/{pid}/fd/{fd}") != "tun":  # /dev/net/tun: read only those fdinfo
                    continue
                if f"iff:\t{tap}" in (self.read(f"/proc/{pid}/fdinfo/{fd}") or "").splitlines():
                    holders.append((pid, self.read(f"/proc/{pid}/comm") or "?"))
                    break
        return holders

    def signal(self, pid: int, number: int) -> None:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass

    # Changes. Sysfs files take one write each; the rest are plain filesystem operations.

    def write(self, host_path: str | Path, value: str) -> None:
        with open(self.path(host_path), "w") as file:
            file.write(value)

    def ownership(self, host_path: str | Path) -> str:
        """"uid:gid", the form chown takes back to restore it exactly."""
        info = self.path(host_path).stat()
        return f"{info.st_uid}:{info.st_gid}"

    def chown(self, host_path: str | Path, owner: str) -> None:
        """owner: a user name (its primary group too) or "uid:gid"."""
        if ":" in owner:
            uid, gid = (int(part) for part in owner.split(":"))
        else:
            user = self.user(owner)
            if user is None:
                raise HostCommandError(f"no user {owner!r}")
            uid, gid = user.uid, user.gid
        os.chown(self.path(host_path), uid, gid)

    def make_dir(self, host_path: str | Path) -> None:
        self.path(host_path).mkdir()

    def remove_dir(self, host_path: str | Path) -> None:
        self.path(host_path).rmdir()

    def remove_file(self, host_path: str | Path) -> None:
        self.path(host_path).unlink(missing_ok=True)

    def run(self, argv: list[str], *, timeout: float = 60, stdin: str | None = None) -> str:
        """A host tool that acts on the kernel, the user database or a daemon (ip, qemu-img, useradd, virsh)."""
        import subprocess

        if self.is_fake:
            # Reads came from the fake tree; the tool would change this machine instead.
            raise HostCommandError(f"not run against the host tree {self.root}: use --dry-run to see the plan")
        try:
            result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HostCommandError(f"{argv[0]}: {exc}") from exc
        if result.returncode != 0:
            raise HostCommandError(result.stderr.strip() or f"{argv[0]} exited with status {result.returncode}")
        return result.stdout

    def disk_image_info(self, path: Path) -> dict[str, Any]:
        """`qemu-img info` of an image a spec names: a read, so it runs on a fake host tree too (the spec's
        files are never under it). -U: another VM may hold the image open. Raises HostCommandError."""
        import subprocess

        argv = ["qemu-img", "info", "-U", "--output=json", str(path)]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HostCommandError(f"qemu-img: {exc}") from exc
        if result.returncode != 0:
            raise HostCommandError(result.stderr.strip().removeprefix("qemu-img: ") or "qemu-img info failed")
        info: dict[str, Any] = json.loads(result.stdout)
        return info

    # Users: the tree's /etc/passwd and /etc/group under a fake root that has them, else NSS (LDAP and all).

    def user(self, name: str) -> User | None:
        users = self._tree_database("passwd")
        if users is not None:
            return next((User(u[0], int(u[2]), int(u[3])) for u in users if len(u) > 3 and u[0] == name), None)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return User(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def home_dir(self, name: str) -> Path | None:
        users = self._tree_database("passwd")
        if users is not None:
            return next((Path(u[5]) for u in users if len(u) > 5 and u[0] == name), None)
        try:
            return Path(pwd.getpwnam(name).pw_dir)
        except KeyError:
            return None

    def current_user(self) -> User:
        """Who runs vmrun (and qemu, when that is not root)."""
        uid, gid = os.geteuid(), os.getegid()
        users = self._tree_database("passwd")
        if users is not None:
            return User(next((u[0] for u in users if len(u) > 3 and u[2] == str(uid)), str(uid)), uid, gid)
        try:
            return User(pwd.getpwuid(uid).pw_name, uid, gid)
        except KeyError:
            return User(str(uid), uid, gid)

    def group_ids(self, user: User) -> frozenset[int]:
        groups = self._tree_database("group")
        if groups is None:
            return frozenset(os.getgrouplist(user.name, user.gid))
        return frozenset({user.gid, *(int(g[2]) for g in groups if len(g) > 3 and user.name in g[3].split(","))})

    def _tree_database(self, name: str) -> list[list[str]] | None:
        """/etc/passwd or /etc/group of a fake tree that has one; None means: ask NSS."""
        text = self.read(f"/etc/{name}") if self.is_fake else None
        if text is None:
            return None
        return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]

    def memlock_limits(self) -> tuple[int | None, int | None]:
        """This process's soft and hard RLIMIT_MEMLOCK in bytes (qemu inherits them); None is unlimited."""
        limits = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        soft, hard = (None if limit == resource.RLIM_INFINITY else limit for limit in limits)
        return soft, hard

    def socket_refusal(self, directory: Path) -> str | None:
        """Why a unix socket cannot be made in directory, as qemu makes its monitor's and agent's; None when
        it can. The probe socket is removed at once."""
        import socket

        probe = self.path(directory) / f".vmrun-probe-{threading.get_native_id()}"  # a thread id: unique on the host
        probe.unlink(missing_ok=True)  # left by a killed vmrun whose thread had this id
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            try:
                listener.bind(str(probe))
            except OSError as exc:
                return exc.strerror or str(exc)
        probe.unlink(missing_ok=True)
        return None

    def supports_xattrs(self, directory: Path) -> bool:
        """Whether the filesystem under directory stores user.* xattrs, as QEMU's mapped-xattr needs:
        set one on the directory and remove it; where setting is refused for another reason (a read-only
        mount), asking for one tells too."""
        where = self.path(directory)
        try:
            os.setxattr(where, _XATTR_PROBE, b"1")
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                return False
            return self._reads_xattrs(where)
        os.removexattr(where, _XATTR_PROBE)
        return True

    @staticmethod
    def _reads_xattrs(where: Path) -> bool:
        try:
            os.getxattr(where, _XATTR_PROBE)
        except OSError as exc:
            return exc.errno != errno.ENOTSUP
        return True

    def cpus(self) -> tuple[frozenset[int], frozenset[int]]:
        """The host CPUs that exist (present) and those online."""
        return parse_cpu_list(self.read(f"{CPU_DIR}/present")), parse_cpu_list(self.read(f"{CPU_DIR}/online"))

    def numa_nodes(self) -> tuple[frozenset[int], frozenset[int]]:
        """The NUMA nodes that exist and those online; a kernel without NUMA has node 0 alone."""
        if not self.exists(NODE_DIR):
            return frozenset({0}), frozenset({0})
        return parse_cpu_list(self.read(f"{NODE_DIR}/possible")), parse_cpu_list(self.read(f"{NODE_DIR}/online"))

    def hugepage_counts(self, pool: str) -> dict[str, int] | None:
        """A pool's nr (total), free and resv (promised to a mapping, not yet faulted in: only the system-wide
        pool counts them) pages; None when the kernel has no pool of that size there."""
        total = self.read(f"{pool}/nr_hugepages")
        if total is None:
            return None
        return {"total": int(total), "free": int(self.read(f"{pool}/free_hugepages") or 0),
                "reserved": int(self.read(f"{pool}/resv_hugepages") or 0)}

    def memory_available(self) -> int | None:
        """MemAvailable in bytes: what a growing huge page pool can take without pushing out other work."""
        match = re.search(r"^MemAvailable:\s+(\d+) kB", self.read("/proc/meminfo") or "", re.MULTILINE)
        return int(match.group(1)) * 1024 if match else None

    def thread_ids(self, pid: int) -> list[int]:
        return sorted(int(name) for name in self.listdir(f"/proc/{pid}/task") if name.isdigit())

    def thread_name(self, pid: int, tid: int) -> str | None:
        return self.read(f"/proc/{pid}/task/{tid}/comm")

    def thread_cpus(self, pid: int, tid: int) -> frozenset[int] | None:
        """The CPUs a thread may run on (its affinity); None when the thread is gone."""
        match = re.search(r"^Cpus_allowed_list:\s*(\S+)", self.read(f"/proc/{pid}/task/{tid}/status") or "",
                          re.MULTILINE)
        return parse_cpu_list(match.group(1)) if match else None

    def pin_thread(self, tid: int, cpus: frozenset[int]) -> None:
        """Raises OSError (ESRCH: the thread is gone; EINVAL: no CPU of cpus is online)."""
        if self.is_fake:
            raise OSError(errno.EPERM, f"cannot pin thread {tid} of a fake host")
        os.sched_setaffinity(tid, cpus)

    def cpu_flags(self) -> frozenset[str]:
        cpuinfo = self.read("/proc/cpuinfo") or ""
        match = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
        return frozenset(match.group(1).split()) if match else frozenset()

    def kvm_modules(self) -> list[str]:
        return [name for name in self.listdir("/sys/module") if name.startswith("kvm")]

    @staticmethod
    def find_program(name: str) -> Path | None:
        """The file a program name runs, as the shell finds it on PATH, every link resolved; None when missing."""
        found = name if "/" in name else next(
            (str(Path(d) / name) for d in os.environ.get("PATH", "").split(os.pathsep)
             if os.access(Path(d) / name, os.X_OK)),
            None,
        )
        try:
            return Path(found).resolve(strict=True) if found else None
        except OSError:
            return None

    def qemu_capabilities(self, program: Path, *, cache_dir: Path | None = None) -> QemuCapabilities | None:
        """What the qemu program (a resolved path) supports, asked with `-help` and cached by the
        program's identity (path, size, mtime) as libvirt does; None when it does not run.

        This runs the program: the caller decides whether it may."""
        try:
            return self._qemu_capabilities(program, cache_dir or default_cache_root())
        except OSError:
            return None

    def _qemu_capabilities(self, program: Path, cache_dir: Path) -> QemuCapabilities:
        stat = program.stat()
        key = f"{program}:{stat.st_size}:{stat.st_mtime_ns}"
        # One file per program, so probing several (a test's fake qemu, a second install) does not thrash.
        cache_file = cache_dir / f"qemu-capabilities-{zlib.crc32(str(program).encode()):08x}.json"
        try:
            cached = json.loads(cache_file.read_text())
            if cached.get("key") == key:
                return QemuCapabilities(**cached["capabilities"])
        except (OSError, ValueError, TypeError):
            pass
        capabilities = parse_qemu_help(self._qemu_help(program))
        try:  # the cache only saves time: failing to write it changes nothing else
            cache_dir.mkdir(parents=True, exist_ok=True)
            # One temporary per thread: `up DIR` probes from several threads of one process at once.
            temporary = cache_file.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            temporary.write_text(json.dumps({"key": key, "capabilities": attrs.asdict(capabilities)}))
            temporary.replace(cache_file)
        except OSError:
            pass
        return capabilities

    @staticmethod
    def _qemu_help(program: Path) -> str:
        import subprocess  # only on a capability-cache miss

        try:
            return subprocess.run(
                [str(program), "-help"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
        except subprocess.SubprocessError as exc:
            raise OSError(f"{program} -help failed: {exc}") from exc
