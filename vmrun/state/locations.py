"""Where vmrun keeps per-VM state on the host, by convention (root vs. a normal user).

Plain classes, not attrs: `status` finds VMs through them and must not pay attrs' import."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmrun.errors import Problem, UsageError
from vmrun.host.dirs import default_image_cache
from vmrun.spec.vmname import VM_NAME_RULE, is_vm_name

if TYPE_CHECKING:
    from vmrun.spec.model import Spec

LOCK_DIR = ".locks"  # under the run root; a dot-name is never a VM name
UEFI_VARS_FILE = "OVMF_VARS.fd"
SEED_FILE = "seed.iso"


class _Value:
    """Equal, hashed and shown by its fields, as a frozen record."""

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(self.__slots__, self._fields(), strict=True))
        return f"{type(self).__qualname__}({shown})"


class RunPaths(_Value):
    """Where one VM's sockets and files live: run_dir per run; state_dir outlives runs (UEFI vars)."""

    __slots__ = ("run_dir", "state_dir")

    def __init__(self, run_dir: Path, state_dir: Path) -> None:
        self.run_dir, self.state_dir = run_dir, state_dir

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "qga.sock"

    @property
    def console_socket(self) -> Path:
        return self.run_dir / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def last_console_log(self) -> Path:
        """The console log of the VM's last run, kept when its run dir goes (`vmrun logs` after down)."""
        return self.state_dir / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    def make_state_dir(self) -> None:
        """Private: it keeps the guest's firmware variables and its cloud-init user-data (passwords, keys)."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)  # mkdir's mode is filtered by the umask, and the directory may predate this

    @property
    def uefi_vars(self) -> Path:
        return self.state_dir / UEFI_VARS_FILE

    @property
    def cloud_init_seed(self) -> Path:
        """The NoCloud seed `up` rebuilds from the spec's [cloud_init] files."""
        return self.state_dir / SEED_FILE


class Places(_Value):
    """Where VMs live on this host; a VM's RunPaths derive from its name."""

    __slots__ = ("image_cache", "run_root", "state_root")

    def __init__(self, run_root: Path, state_root: Path, image_cache: Path | None = None) -> None:
        self.run_root, self.state_root = run_root, state_root
        self.image_cache = image_cache or default_image_cache()  # downloaded base images, by digest

    def of(self, name: str) -> RunPaths:
        """A VM's directories: each a direct child of its root, never a symbolic link. The name comes from
        a command line or a spec, so it is checked against the VM name rule before it becomes a path."""
        if not is_vm_name(name):
            raise UsageError(f"{name!r} is not a VM name", hint=VM_NAME_RULE)
        return RunPaths(run_dir=_child(self.run_root, name), state_dir=_child(self.state_root, name))

    @property
    def lock_dir(self) -> Path:
        return self.run_root / LOCK_DIR

    def holds(self, path: str) -> bool:
        """Whether a path (a relative one from the working directory, links followed) leads to what vmrun
        keeps for its VMs: anything under the run root (sockets, pidfiles, logs), or a VM's firmware
        variables or cloud-init seed. The rest of the state root may hold the user's own disk images."""
        where = Path(path).resolve()
        run_root = self.run_root.resolve()
        if where.is_relative_to(run_root):
            return True
        return where.parent.parent == self.state_root.resolve() and where.name in (UEFI_VARS_FILE, SEED_FILE)


def extra_args_reaching_vmrun(spec: Spec, places: Places) -> Iterator[Problem]:
    """extra_args that name a file or socket of vmrun's, this VM's or another's: qemu opens them as root
    before it drops privileges, and a socket bound on a path replaces the one there (another VM's QMP)."""
    from vmrun.spec.extra_args import named_paths

    for index, arg in enumerate(spec.qemu.extra_args):
        reached = next((path for path in named_paths(arg) if places.holds(path)), None)
        if reached is not None:
            yield Problem(f"qemu.extra_args[{index}]", f"{reached} is vmrun's own (its run directory, a VM's "
                          "firmware variables or seed)", "name a path of your own")


def _child(root: Path, name: str) -> Path:
    # The roots are resolved once (/var/run is often a link to /run); below them vmrun follows no link.
    child = root.resolve() / name
    if child.is_symlink():
        raise UsageError(f"{child} is a symbolic link; vmrun keeps its VMs in real directories",
                         hint=f"remove the link {child}")
    return child
