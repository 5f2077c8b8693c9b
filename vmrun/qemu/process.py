"""One qemu process: start it daemonized through `sh`, tell whether it lives, stop it step by step."""

from __future__ import annotations

import importlib
import itertools
import resource
import signal
import threading
import time
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from vmrun.crashpoints import crash_point
from vmrun.errors import LaunchError
from vmrun.progress import Say
from vmrun.signals import for_workers

if TYPE_CHECKING:
    from vmrun.host.system import Host
    from vmrun.host.view import HostView
    from vmrun.state.locations import RunPaths

KILL_WAIT = 5.0  # seconds qemu gets after quit and after SIGTERM before the next step
EXIT_POLL = 0.01  # qemu is gone milliseconds after its SHUTDOWN event; a look is a few reads in /proc
LOG_TAIL_LINES = 15
STARTUP_TIMEOUT = 120.0  # qemu -daemonize returns once initialized; this bounds a wedged start


def read_pid(paths: RunPaths) -> int | None:
    try:
        return int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def is_our_qemu(host: HostView, pid: int | None, name: str) -> bool:
    """The pid still runs *this* VM's qemu (a recycled pid belongs to someone else)."""
    if pid is None:
        return False
    cmdline = host.process_cmdline(pid)
    return cmdline is not None and _names_vm(cmdline, name)


def _names_vm(cmdline: str, name: str) -> bool:
    return f"guest={name},process=vmrun-{name}" in cmdline


def is_gone(host: HostView, pid: int, name: str) -> bool:
    """qemu has really exited: no such process, a zombie whose threads have all ended (its files, taps and
    devices are closed), or the pid taken by someone else. An exiting qemu shows an empty command line
    while it still holds its taps and VFIO devices, so an empty command line alone is not gone; and its
    main thread turns zombie before the others have closed what they share, so a zombie alone is not."""
    state = host.process_state(pid)
    if state is None:
        return True
    if state == "Z":
        return host.listdir(f"/proc/{pid}/task") in ([], [str(pid)])
    cmdline = host.process_cmdline(pid)
    return bool(cmdline) and not is_our_qemu(host, pid, name)


def find_qemu(host: HostView, paths: RunPaths, name: str) -> int | None:
    """This run's qemu, alive or still exiting: by its pidfile, else (not written yet, damaged, or taken
    by a -pidfile of qemu.extra_args) by the pidfile path on its command line, which names this run's
    directory, and its -name; a qemu that vmrun lost sight of is still found and stopped."""
    pid = read_pid(paths)
    if pid is not None and not is_gone(host, pid, name):
        return pid
    return next((pid for pid in host.process_ids() if _started_for(host.process_argv(pid) or [], paths, name)), None)


def _started_for(argv: list[str], paths: RunPaths, name: str) -> bool:
    pidfile = str(paths.pidfile)
    names_pidfile = any(pair == ("-pidfile", pidfile) for pair in itertools.pairwise(argv))
    return names_pidfile and _names_vm(" ".join(argv), name)


def wait_for_exit(host: HostView, pid: int, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not is_gone(host, pid, name):
        if time.monotonic() >= deadline:
            return False
        time.sleep(EXIT_POLL)
    return True


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


_sh_loader: threading.Thread | None = None


def load_launcher() -> None:
    """Import `sh` in a thread, once: ~50 ms (asyncio, which the QMP client needs next anyway, and
    importlib.metadata) spent while `up` waits on the host's tools and files rather than before qemu starts."""
    global _sh_loader
    if _sh_loader is None:
        _sh_loader = import_in_background("sh")


def import_in_background(module: str) -> threading.Thread:
    """A started thread that imports module; join it before the import that needs the module. Not a daemon:
    an interpreter that exits (an early error) while a daemon thread still imports may crash (SIGSEGV)."""
    loader = threading.Thread(target=_import_quietly, args=(module,), name=f"import {module}")
    loader.start()
    return loader


def _import_quietly(module: str) -> None:
    for_workers()  # a Ctrl-C meanwhile is the main thread's, as in a fleet's workers
    with suppress(Exception):  # the import that needs the module reports its failure
        importlib.import_module(module)


def start_daemon(argv: list[str], *, memlock: int | None, timeout: float) -> None:
    """Run a self-daemonizing program (qemu -daemonize) through sh until it returns; LaunchError with its own
    words on failure. No terminal and no stdout pipe: a tty or a reader thread per stream costs each launch
    milliseconds, and qemu's daemon says nothing there; stderr is kept for the reason of a failure."""
    load_launcher()
    assert _sh_loader is not None
    _sh_loader.join()
    import sh

    # VFIO pins all guest RAM: the limit is raised in the child before exec, while still root.
    raise_memlock = None if memlock is None else partial(
        resource.setrlimit, resource.RLIMIT_MEMLOCK, (memlock, memlock))
    try:
        started = sh.Command(argv[0])(*argv[1:], _bg=True, _bg_exc=False, _no_out=True, _tty_out=False,
                                      _preexec_fn=raise_memlock)
    except sh.CommandNotFound as exc:
        raise LaunchError(f"{argv[0]} not found") from exc
    crash_point("qemu started, its pidfile not yet written")
    # Not sh's own _timeout: its watcher wakes every 0.1 s and the command's end waits for it. A timer that
    # kills the program is cancelled the moment it returns.
    expired = threading.Event()

    def give_up() -> None:
        expired.set()
        with suppress(ProcessLookupError):
            started.kill()

    watchdog = threading.Timer(timeout, give_up)
    watchdog.start()
    try:
        started.wait()
    except sh.ErrorReturnCode as exc:
        if expired.is_set():
            raise LaunchError(f"{argv[0]} did not finish starting within {timeout:g} s") from exc
        stderr = exc.stderr.decode(errors="replace").strip()
        raise LaunchError(stderr or f"exit status {exc.exit_code}") from exc
    finally:
        watchdog.cancel()


def launch(argv: list[str], paths: RunPaths, *, memlock: int | None) -> int:
    """Start qemu with -daemonize and return its pid; qemu's own message on failure.

    -daemonize returns once qemu has initialized: exit 0 means sockets and pidfile exist,
    and a bad option or device fails at once, so there is nothing to poll for.
    """
    try:
        start_daemon(argv, memlock=memlock, timeout=STARTUP_TIMEOUT)
    except LaunchError as exc:
        raise LaunchError(f"qemu failed to start: {exc}", hint=_console_hint(paths)) from exc
    pid = read_pid(paths)
    if pid is None:
        raise LaunchError(f"qemu started but wrote no pidfile at {paths.pidfile}")
    return pid


def _console_hint(paths: RunPaths) -> str | None:
    tail = log_tail(paths.console_log)
    return f"console log ends with:\n{tail}" if tail else None


def died_during_startup(paths: RunPaths) -> LaunchError:
    return LaunchError("qemu exited during start-up", hint=_console_hint(paths) or "the console log is empty")


def stop(host: Host, paths: RunPaths, name: str, *, timeout: float, force: bool, say: Say) -> str:
    """powerdown -> wait -> quit -> SIGTERM -> SIGKILL; returns the step that ended qemu. Until no process of
    this run is left: a vmrun killed while qemu daemonized leaves its parent and its daemon child, both
    carrying the run's argv, and the first one found may be the parent."""
    how = "already gone"
    while (pid := find_qemu(host, paths, name)) is not None:
        how = _stop_one(host, paths, name, pid, timeout=timeout, force=force, say=say)
    return how


def _stop_one(host: Host, paths: RunPaths, name: str, pid: int, *, timeout: float, force: bool, say: Say) -> str:
    from vmrun.qemu.monitor import Monitor

    try:
        with Monitor.connected(paths.qmp_socket, timeout=5) as monitor:
            if not force:
                say(f"asking {name} to power down (ACPI), waiting up to {timeout:g} s")
                if monitor.powerdown(timeout=timeout) and wait_for_exit(host, pid, name, KILL_WAIT):
                    return "ACPI powerdown"
                say(f"{name} ignored the powerdown; quitting qemu")
            monitor.quit()
    except LaunchError as exc:
        say(f"QMP unavailable ({exc}); signalling qemu")
    if wait_for_exit(host, pid, name, KILL_WAIT):
        return "QMP quit"
    for step, number in (("SIGTERM", signal.SIGTERM), ("SIGKILL", signal.SIGKILL)):
        host.signal(pid, number)
        if wait_for_exit(host, pid, name, KILL_WAIT):
            return step
    raise LaunchError(f"qemu (pid {pid}) survived SIGKILL")
