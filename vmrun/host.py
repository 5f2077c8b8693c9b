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
from pathlib import Path

import attrs

from vmrun.render import HostFacts

_KVM_HARDWARE_MODULES = ("kvm_intel", "kvm_amd")


class HostCommandError(Exception):
    """A host tool failed; preflight turns this into a rollback and a PreflightError."""


@attrs.frozen
class QemuCapabilities:
    version: str
    has_run_with: bool
    has_runas: bool
    has_sandbox: bool


@attrs.frozen
class Host:
    root: Path = Path("/")

    def path(self, host_path: str | Path) -> Path:
        """Where a host path ("/sys/...") lives under this root."""
        return self.root / Path(host_path).relative_to("/")

    def exists(self, host_path: str | Path) -> bool:
        return self.path(host_path).exists()

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

    def process_cmdline(self, pid: int) -> str | None:
        """A process's command line, arguments joined by spaces; None when there is no such process."""
        try:
            raw = self.path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")

    def signal(self, pid: int, number: int) -> None:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass

    def write(self, host_path: str | Path, value: str) -> None:
        """A sysfs-style write: one value, no truncation games (sysfs files take one write)."""
        with open(self.path(host_path), "w") as file:
            file.write(value)

    def owner(self, host_path: str | Path) -> str:
        uid = self.path(host_path).stat().st_uid
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    def chown(self, host_path: str | Path, user: str) -> None:
        entry = pwd.getpwnam(user)
        os.chown(self.path(host_path), entry.pw_uid, entry.pw_gid)

    def user(self, name: str) -> pwd.struct_passwd | None:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            return None

    def run(self, argv: list[str], *, timeout: float = 60) -> str:
        """A host tool (ip, qemu-img, useradd); its own message on failure."""
        import subprocess

        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HostCommandError(f"{argv[0]}: {exc}") from exc
        if result.returncode != 0:
            raise HostCommandError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.returncode}")
        return result.stdout

    def is_block_device(self, host_path: str | Path) -> bool:
        try:
            return stat.S_ISBLK(self.path(host_path).stat().st_mode)
        except OSError:
            return False

    def euid(self) -> int:
        return os.geteuid()

    def memlock_limit(self) -> int | None:
        """This process's soft RLIMIT_MEMLOCK in bytes; None when unlimited."""
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        return None if soft == resource.RLIM_INFINITY else soft

    # Shares are user data, not host devices: these look at the real path, not under root.

    @staticmethod
    def supports_xattrs(directory: Path) -> bool:
        """Whether the filesystem under directory stores user.* xattrs (QEMU's mapped-xattr needs them)."""
        try:
            os.getxattr(directory, "user.vmrun.probe")
        except OSError as exc:
            return exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP)
        return True

    def blocked_for(self, user_name: str, path: Path, *, write: bool) -> str | None:
        """The first component of path that user cannot traverse (or read, or write at the end)."""
        user = pwd.getpwnam(user_name)
        gids = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
        for component in [*reversed(path.parents), path]:
            info = component.stat()
            shift = 6 if info.st_uid == user.pw_uid else 3 if info.st_gid in gids else 0
            allowed = (info.st_mode >> shift) & 7
            needed = (5 | (2 if write else 0)) if component == path else 1
            if allowed & needed != needed:
                return f"{component} (mode {oct(info.st_mode & 0o777)})"
        return None

    def start_daemon(self, argv: list[str], *, memlock: int | None, timeout: float) -> None:
        """Run a self-daemonizing program (qemu -daemonize) through sh; its stderr on failure."""
        import sh  # ~70 ms to import: only `up` pays for it

        def raise_memlock() -> None:
            # VFIO pins all guest RAM; the limit must be raised before exec, while still root.
            if memlock is not None:
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock))

        try:
            sh.Command(argv[0])(*argv[1:], _return_cmd=True, _preexec_fn=raise_memlock, _timeout=timeout)
        except sh.ErrorReturnCode as exc:
            stderr = exc.stderr.decode(errors="replace").strip()
            raise HostCommandError(stderr or f"exit status {exc.exit_code}") from exc
        except sh.CommandNotFound as exc:
            raise HostCommandError(f"{argv[0]} not found") from exc
        except sh.TimeoutException as exc:
            raise HostCommandError(f"{argv[0]} did not finish starting within {timeout:g} s") from exc

    def is_root_user(self) -> bool:
        return os.geteuid() == 0

    def cpu_flags(self) -> frozenset[str]:
        cpuinfo = self.read("/proc/cpuinfo") or ""
        match = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
        return frozenset(match.group(1).split()) if match else frozenset()

    def kvm_modules(self) -> list[str]:
        return [name for name in self.listdir("/sys/module") if name.startswith("kvm")]

    def kvm_verdict(self) -> tuple[bool, str]:
        """Whether KVM can run stock guests, and why (said to the user either way)."""
        if not self.exists("/dev/kvm"):
            return False, "no /dev/kvm on this host"
        if not os.access(self.path("/dev/kvm"), os.R_OK | os.W_OK):
            return False, "/dev/kvm is not readable and writable by this user"
        loaded = self.kvm_modules()
        hardware = [name for name in loaded if name in _KVM_HARDWARE_MODULES]
        if hardware:
            return True, f"/dev/kvm is usable ({hardware[0]} loaded)"
        flags = self.cpu_flags() & {"vmx", "svm"}
        if flags:
            return True, f"/dev/kvm is usable (CPU has {sorted(flags)[0]})"
        backing = ", ".join(name for name in loaded if name != "kvm") or "an unknown module"
        return False, (
            f"/dev/kvm is backed by {backing}, not kvm_intel/kvm_amd, and the CPU has no vmx/svm: "
            "hardware virtualization is not available, so guests run under TCG"
        )

    def qemu_capabilities(self, binary: str, *, cache_dir: Path | None = None) -> QemuCapabilities | None:
        """What the qemu binary supports, cached by its identity (path, size, mtime) as libvirt does;
        None when there is no such binary or it does not run."""
        try:
            return self._qemu_capabilities(binary, cache_dir or default_cache_dir())
        except OSError:
            return None

    def _qemu_capabilities(self, binary: str, cache_dir: Path) -> QemuCapabilities:
        resolved = self._which(binary)
        stat = resolved.stat()
        key = f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}"
        cache_file = cache_dir / "qemu-capabilities.json"
        try:
            cached = json.loads(cache_file.read_text())
            if cached.get("key") == key:
                return QemuCapabilities(**cached["capabilities"])
        except (OSError, ValueError, TypeError):
            pass
        capabilities = self._probe_qemu(resolved)
        cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"key": key, "capabilities": attrs.asdict(capabilities)}))
        temporary.replace(cache_file)
        return capabilities

    @staticmethod
    def _which(binary: str) -> Path:
        found = binary if "/" in binary else next(
            (str(Path(d) / binary) for d in os.environ.get("PATH", "").split(os.pathsep)
             if os.access(Path(d) / binary, os.X_OK)),
            None,
        )
        if found is None or not Path(found).exists():
            raise FileNotFoundError(binary)
        return Path(found).resolve()

    @staticmethod
    def _probe_qemu(binary: Path) -> QemuCapabilities:
        import subprocess  # only on a capability-cache miss

        try:
            help_text = subprocess.run(
                [str(binary), "-help"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
        except subprocess.SubprocessError as exc:
            raise OSError(f"{binary} -help failed: {exc}") from exc
        version = re.search(r"version (\S+)", help_text)
        options = set(re.findall(r"^(-[\w-]+)", help_text, re.MULTILINE))
        return QemuCapabilities(
            version=version.group(1) if version else "unknown",
            has_run_with="-run-with" in options,
            has_runas="-runas" in options,
            has_sandbox="-sandbox" in options,
        )


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmrun"


def gather_facts(host: Host, qemu_binary: str) -> HostFacts:
    kvm_usable, kvm_reason = host.kvm_verdict()
    qemu = host.qemu_capabilities(qemu_binary)
    return HostFacts(
        qemu_version=qemu.version if qemu else None,
        kvm_usable=kvm_usable,
        kvm_reason=kvm_reason,
        vhost_net=host.exists("/dev/vhost-net"),
        drop_privileges=host.is_root_user(),
        qemu_has_run_with=bool(qemu and qemu.has_run_with),
        seccomp=bool(qemu and qemu.has_sandbox),
    )
