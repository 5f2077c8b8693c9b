"""Command line: the only place that catches VmrunError, prints it and picks the exit code."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from vmrun import __version__
from vmrun.commands import (
    Handler,
    cmd_console,
    cmd_diff,
    cmd_down,
    cmd_exec,
    cmd_export,
    cmd_host_check,
    cmd_host_iommu,
    cmd_init,
    cmd_logs,
    cmd_preflight,
    cmd_render,
    cmd_status,
    cmd_up,
    cmd_validate,
    report,
)
from vmrun.errors import VmrunError
from vmrun.locations import default_run_root, default_state_root

EXIT_STDOUT_CLOSED = 128 + signal.SIGPIPE


def positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and 1024")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value <= 86400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds between 0 and 86400")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmrun",
        description="Declarative QEMU/KVM VMs: a TOML spec in, a checked host and a running VM out.",
        epilog="Exit codes: 0 ok, 2 invalid spec or usage, 3 host refused, 4 qemu failed, "
        "5 guest agent or hook failed, 6 drift (vmrun diff), 141 stdout closed early, 1 a bug in vmrun.",
    )
    parser.add_argument("--version", action="version", version=f"vmrun {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        "--host-root", default=os.environ.get("VMRUN_HOST_ROOT", "/"), metavar="DIR",
        help="read and write sysfs, /dev and /proc under DIR (a fake host tree); env VMRUN_HOST_ROOT",
    )
    parser.add_argument(
        "--run-dir", default=os.environ.get("VMRUN_RUN_DIR") or str(default_run_root()), metavar="DIR",
        help="where per-VM run state lives (default: %(default)s); env VMRUN_RUN_DIR",
    )
    parser.add_argument(
        "--state-dir", default=os.environ.get("VMRUN_STATE_DIR") or str(default_state_root()), metavar="DIR",
        help="what outlives a run, such as UEFI variables (default: %(default)s); env VMRUN_STATE_DIR",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate_cmd = commands.add_parser("validate", help="check specs without touching the host")
    validate_cmd.add_argument("specs", nargs="+", metavar="SPEC")
    validate_cmd.set_defaults(handler=cmd_validate)

    render_cmd = commands.add_parser("render", help="print the exact qemu command line")
    render_cmd.add_argument("spec", metavar="SPEC")
    render_cmd.add_argument("--json", action="store_true", help="a JSON array, argv[0] the qemu binary")
    render_cmd.set_defaults(handler=cmd_render)

    init_cmd = commands.add_parser("init", help="write a commented starter spec")
    init_cmd.add_argument("name", metavar="NAME")
    init_cmd.add_argument("-o", "--output", metavar="FILE", help="default: NAME.toml")
    init_cmd.add_argument("--force", action="store_true", help="overwrite existing files")
    init_cmd.add_argument("--base", metavar="IMAGE",
                          help="boot this cloud image through an overlay; also writes NAME-user-data.yaml")
    init_cmd.set_defaults(handler=cmd_init)

    up_cmd = commands.add_parser(
        "up", help="bring VMs to their specs: start what is not running, leave what matches alone",
        description="Per VM: validate, preflight, launch, wait for the agent, ethtool step, post_boot hooks. "
        "A VM already running with the same configuration is left alone; one running with another is refused "
        "unless --restart. A directory means its *.toml specs; VMs start in parallel.",
    )
    up_cmd.add_argument("specs", nargs="+", metavar="SPEC|DIR")
    up_cmd.add_argument("--fresh", action="store_true", help="start UEFI guests with fresh firmware variables")
    up_cmd.add_argument("--restart", action="store_true",
                        help="restart a VM that runs with another configuration (graceful down, then up)")
    up_cmd.add_argument("--timeout", type=positive_float, default=30.0, metavar="S",
                        help="seconds a restarted guest gets to power down (default: 30)")
    up_cmd.add_argument("--jobs", type=positive_int, metavar="N", help="start at most N VMs at once (default: all)")
    up_cmd.set_defaults(handler=cmd_up)

    diff_cmd = commands.add_parser("diff", help="how running VMs differ from their specs (exit 6 on drift)")
    diff_cmd.add_argument("specs", nargs="+", metavar="SPEC|DIR")
    diff_cmd.add_argument("--json", action="store_true")
    diff_cmd.set_defaults(handler=cmd_diff)

    down_cmd = commands.add_parser("down", help="stop VMs and undo their host changes")
    down_cmd.add_argument("vms", nargs="*", metavar="NAME|SPEC|DIR")
    down_cmd.add_argument("--all", action="store_true", help="every VM under the run directory")
    down_cmd.add_argument("--timeout", type=positive_float, default=30.0, metavar="S",
                          help="seconds the guest gets to power down (default: 30)")
    down_cmd.add_argument("--force", action="store_true", help="skip the powerdown: quit, then kill")
    down_cmd.set_defaults(handler=cmd_down)

    status_cmd = commands.add_parser("status", help="running / stopped / dead, pid, accel, agent")
    status_cmd.add_argument("vm", nargs="?", metavar="NAME|SPEC")
    status_cmd.add_argument("--json", action="store_true")
    status_cmd.set_defaults(handler=cmd_status)

    exec_cmd = commands.add_parser("exec", help="run a command in the guest over the agent")
    exec_cmd.add_argument("name", metavar="NAME")
    exec_cmd.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- CMD...")
    exec_cmd.add_argument("--timeout", type=positive_float, default=60.0, metavar="S", help="default: 60")
    exec_cmd.add_argument("--agent-timeout", type=positive_float, default=10.0, metavar="S", help=argparse.SUPPRESS)
    exec_cmd.set_defaults(handler=cmd_exec)

    logs_cmd = commands.add_parser("logs", help="print the serial console log")
    logs_cmd.add_argument("name", metavar="NAME")
    logs_cmd.add_argument("-f", "--follow", action="store_true", help="keep printing while the VM runs")
    logs_cmd.set_defaults(handler=cmd_logs)

    console_cmd = commands.add_parser("console", help="attach to the serial console")
    console_cmd.add_argument("name", metavar="NAME")
    console_cmd.set_defaults(handler=cmd_console)

    preflight_cmd = commands.add_parser("preflight", help="check the host and apply the host changes the spec needs")
    preflight_cmd.add_argument("spec", metavar="SPEC")
    preflight_cmd.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    preflight_cmd.add_argument("--json", action="store_true", help="the plan as JSON: checks and changes")
    preflight_cmd.set_defaults(handler=cmd_preflight)

    host_cmd = commands.add_parser("host", help="what this host offers: IOMMU groups, KVM, vhost-net, KSM")
    host_commands = host_cmd.add_subparsers(dest="host_command", required=True, metavar="WHAT")
    iommu_cmd = host_commands.add_parser("iommu", help="IOMMU groups, their devices and drivers, viability")
    iommu_cmd.add_argument("--json", action="store_true")
    iommu_cmd.set_defaults(handler=cmd_host_iommu)
    check_cmd = host_commands.add_parser("check", help="KVM (and why not), vhost-net, tun, IOMMU, KSM, qemu")
    check_cmd.add_argument("--json", action="store_true")
    check_cmd.set_defaults(handler=cmd_host_check)

    export_cmd = commands.add_parser("export", help="the same VM as a libvirt domain XML or a systemd unit")
    export_cmd.add_argument("spec", metavar="SPEC")
    export_cmd.add_argument("--format", choices=("libvirt", "systemd"), required=True)
    export_cmd.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
    export_cmd.add_argument("--define", action="store_true", help="libvirt: also `virsh define` the domain")
    export_cmd.set_defaults(handler=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        exit_code = handler(args)
        sys.stdout.flush()  # a reader that went away shows here, not in Python's flush at exit
        return exit_code
    except VmrunError as error:
        if args.debug:
            raise
        report(error)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    except Exception as error:  # noqa: BLE001 - the one place a bug becomes exit 1
        if args.debug:
            raise
        print(f"vmrun: internal error: {type(error).__name__}: {error} (rerun with --debug)", file=sys.stderr)
        return 1


def _reader_went_away() -> int:
    """stdout's reader stopped reading (`vmrun status --json | head -c1`): end quietly, with the status
    a shell reports for a process SIGPIPE ended (128 + 13), as git and ls end there."""
    # Python flushes stdout again at exit; let that write go nowhere instead of raising once more.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_STDOUT_CLOSED


def main_exit() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
