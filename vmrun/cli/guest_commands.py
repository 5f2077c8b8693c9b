"""The commands that reach into a running guest: exec, ssh, cp, logs, console."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from vmrun.cli.arguments import exec_options, options_after_name, ssh_options
from vmrun.cli.common import host_of, places_of, print_json, say, vm_name
from vmrun.errors import UsageError

if TYPE_CHECKING:
    from vmrun.guest.agent import GuestInterface


def cmd_exec(args: argparse.Namespace) -> int:
    from vmrun.run.status import running_paths

    args = options_after_name(args, exec_options)
    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise UsageError("no command given", hint="vmrun exec NAME -- CMD [ARGS...]")
    name = vm_name(args.name)
    paths = running_paths(host_of(args), places_of(args), name)
    return exec_in_guest(name, paths.agent_socket, command, stdin=_standard_input() if args.stdin else None,
                         timeout=args.timeout, agent_timeout=args.agent_timeout, as_json=args.json)


# qemu-ga takes requests of up to 64 MiB of JSON, and input-data goes as base64 (4/3 of the bytes).
STDIN_LIMIT = 32 * 2**20


def _standard_input() -> bytes:
    data = sys.stdin.buffer.read(STDIN_LIMIT + 1)
    if len(data) > STDIN_LIMIT:
        raise UsageError(f"standard input is over {STDIN_LIMIT // 2**20} MiB, more than one guest-exec carries",
                         hint="vmrun cp the file into the guest, then run the command on it")
    return data


def exec_in_guest(name: str, agent_socket: Path, command: list[str], *, stdin: bytes | None, timeout: float,
                  agent_timeout: float, as_json: bool = False) -> int:
    """Run the command, print its output (as JSON: with how it ended), and give its exit code (128 + N for
    signal N)."""
    import shlex

    from vmrun.errors import AgentError
    from vmrun.guest.agent import GuestAgent

    with GuestAgent(agent_socket) as agent:
        agent.wait_ready(timeout=agent_timeout)
        result = agent.exec(command, timeout=timeout, stdin=stdin)
    if as_json:
        # JSON carries text: bytes that are not UTF-8 show as U+FFFD (without --json they pass as they are).
        print_json({"name": name, "command": command, "exit_code": result.exitcode, "signal": result.signal,
                    "stdout": result.stdout.decode(errors="replace"), "stderr": result.stderr.decode(errors="replace"),
                    "stdout_truncated": result.stdout_truncated, "stderr_truncated": result.stderr_truncated})
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()
    for stream, truncated in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)):
        if truncated:
            say(f"the guest agent truncated the command's {stream}")
    if result.signal is not None:
        return 128 + result.signal
    if result.exitcode is None:
        # Not 1: that is the command's own code, or a bug in vmrun.
        raise AgentError(f"{name}: `{shlex.join(command)}` ended, but the guest agent reported neither its exit "
                         "code nor a signal")
    return result.exitcode


def cmd_ssh(args: argparse.Namespace) -> int:
    import os
    import shutil

    from vmrun.guest.ssh import ssh_argv

    args = options_after_name(args, ssh_options)
    session = _ssh_session(args)
    program = shutil.which("ssh")
    if program is None:
        raise UsageError("ssh is not installed", hint="apt-get install openssh-client")
    argv = ssh_argv(**session, options=args.option,
                    command=args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(program, argv)


def cmd_ssh_config(args: argparse.Namespace) -> int:
    from vmrun.guest.ssh import ssh_config

    sys.stdout.write(ssh_config(host=f"vmrun-{vm_name(args.name)}", **_ssh_session(args)))
    return 0


def _ssh_session(args: argparse.Namespace) -> dict[str, Any]:
    """Where and as whom ssh reaches the running guest: ssh_argv's and ssh_config's common arguments."""
    import os

    from vmrun.guest.agent import GuestAgent
    from vmrun.guest.ssh import KNOWN_HOSTS, guest_user, ssh_target
    from vmrun.host.user import invoking_user, private_keys
    from vmrun.run.status import AGENT_PROBE_TIMEOUT, running_spec

    host = host_of(args)
    paths, spec = running_spec(host, places_of(args), vm_name(args.name))

    def interfaces() -> tuple[GuestInterface, ...]:
        with GuestAgent(paths.agent_socket) as agent:
            agent.wait_ready(timeout=AGENT_PROBE_TIMEOUT * 5)
            return agent.interfaces()

    address, port = ssh_target(spec, interfaces)
    # Under sudo, ssh runs as root: the keys are still those of the user `init` put into the user-data.
    sudo_user = os.environ.get("SUDO_USER")
    if args.identity:
        identities = [Path(args.identity).absolute()]
    else:
        identities = private_keys(host.home_dir(sudo_user)) if sudo_user else []
    paths.make_state_dir()
    return {"address": address, "port": port, "user": args.user or guest_user(spec, invoking_user(host, os.environ)),
            "known_hosts": paths.state_dir / KNOWN_HOSTS, "identities": identities}


def cmd_cp(args: argparse.Namespace) -> int:
    from vmrun.guest.cp import copy, endpoints, names_a_directory
    from vmrun.run.status import running_paths

    vm, source, destination = endpoints(args.source, args.destination)
    paths = running_paths(host_of(args), places_of(args), vm)
    copied = copy(vm, source, destination, paths.agent_socket, recursive=args.recursive,
                  into_directory=names_a_directory(args.destination), agent_timeout=args.agent_timeout, say=say)
    if args.json:
        print_json({"name": vm, "source": args.source, "destination": str(copied.target), "bytes": copied.size,
                    "files": copied.files})
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from vmrun.qemu.console import follow_log, show_log
    from vmrun.run.status import refuse_if_roots

    name = vm_name(args.name)
    places = places_of(args)
    paths = places.of(name)
    log = _open_log(paths.console_log)
    if log is None:
        log = _open_log(paths.last_console_log)
        if log is None:
            refuse_if_roots(places, name)
            raise UsageError(f"no console log for {name}: it has not run under {paths.run_dir.parent}",
                             hint="vmrun status lists the VMs")
        say(f"{name} is not running: the console log of its last run")
        show_log(log, sys.stdout.buffer, tail=args.tail)
        log.close()
        log = None  # -f goes on with the next run's log
    else:
        show_log(log, sys.stdout.buffer, tail=args.tail)
    if args.follow:
        follow_log(paths.console_log, log, sys.stdout.buffer)
    elif log is not None:
        log.close()
    return 0


def _open_log(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="the VM may be another user's (sudo)") from exc


def cmd_console(args: argparse.Namespace) -> int:
    from vmrun.qemu.console import attach
    from vmrun.run.status import running_paths

    paths = running_paths(host_of(args), places_of(args), vm_name(args.name))
    say("attached to the serial console; detach with Ctrl-]")
    attach(paths.console_socket)
    return 0
