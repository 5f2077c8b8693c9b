"""The commands that reach into a running guest: exec, ssh, cp, logs, console."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vmrun.cli.common import host_of, places_of, say, vm_name
from vmrun.errors import UsageError

if TYPE_CHECKING:
    from vmrun.guest.agent import GuestInterface


def cmd_exec(args: argparse.Namespace) -> int:
    from vmrun.guest.agent import GuestAgent
    from vmrun.run.status import running_paths

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise UsageError("no command given", hint="vmrun exec NAME -- CMD [ARGS...]")
    paths = running_paths(host_of(args), places_of(args), vm_name(args.name))
    with GuestAgent(paths.agent_socket) as agent:
        agent.wait_ready(timeout=args.agent_timeout)
        result = agent.exec(command, timeout=args.timeout)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    for stream, truncated in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)):
        if truncated:
            say(f"the guest agent truncated the command's {stream}")
    if result.signal is not None:
        return 128 + result.signal
    return result.exitcode if result.exitcode is not None else 1


def cmd_ssh(args: argparse.Namespace) -> int:
    import os
    import shutil

    from vmrun.guest.agent import GuestAgent
    from vmrun.guest.ssh import KNOWN_HOSTS, guest_user, ssh_argv, ssh_target
    from vmrun.host.user import invoking_user, private_keys
    from vmrun.run.status import AGENT_PROBE_TIMEOUT, running_spec

    host = host_of(args)
    paths, spec = running_spec(host, places_of(args), vm_name(args.name))

    def interfaces() -> tuple[GuestInterface, ...]:
        with GuestAgent(paths.agent_socket) as agent:
            agent.wait_ready(timeout=AGENT_PROBE_TIMEOUT * 5)
            return agent.interfaces()

    address, port = ssh_target(spec, interfaces)
    program = shutil.which("ssh")
    if program is None:
        raise UsageError("ssh is not installed", hint="apt-get install openssh-client")
    # Under sudo, ssh runs as root: the keys are still those of the user `init` put into the user-data.
    sudo_user = os.environ.get("SUDO_USER")
    if args.identity:
        identities = [Path(args.identity).absolute()]
    else:
        identities = private_keys(host.home_dir(sudo_user)) if sudo_user else []
    paths.make_state_dir()
    argv = ssh_argv(address=address, port=port, user=args.user or guest_user(spec, invoking_user(host, os.environ)),
                    known_hosts=paths.state_dir / KNOWN_HOSTS, identities=identities,
                    command=args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(program, argv)


def cmd_cp(args: argparse.Namespace) -> int:
    from vmrun.guest.cp import copy, endpoints
    from vmrun.run.status import running_paths

    vm, source, destination = endpoints(args.source, args.destination)
    paths = running_paths(host_of(args), places_of(args), vm)
    copy(vm, source, destination, paths.agent_socket, recursive=args.recursive,
         agent_timeout=args.agent_timeout, say=say)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from vmrun.qemu.console import follow_log
    from vmrun.run.status import existing_paths

    paths = existing_paths(places_of(args), vm_name(args.name))
    if not paths.console_log.exists():
        raise UsageError(f"no console log for {args.name}", hint="vmrun status lists the VMs")
    follow_log(paths.console_log, follow=args.follow, alive=lambda: paths.pidfile.exists())
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    from vmrun.qemu.console import attach
    from vmrun.run.status import running_paths

    paths = running_paths(host_of(args), places_of(args), vm_name(args.name))
    say("attached to the serial console; detach with Ctrl-]")
    attach(paths.console_socket)
    return 0
