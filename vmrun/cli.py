"""Command line: the only place that catches VmrunError, prints it and picks the exit code."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vmrun import __version__
from vmrun.errors import UsageError, VmrunError
from vmrun.locations import default_run_root, default_state_root

if TYPE_CHECKING:
    from vmrun.host import Host
    from vmrun.locations import Places
    from vmrun.render import RunPaths
    from vmrun.spec import Spec

# Commands import what they use when they run: `validate` and `render` must stay fast,
# so neither `sh` nor `qemu.qmp` (~70 ms each) is imported on their way.

Handler = Callable[[argparse.Namespace], int]


def say(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays machine-readable."""
    print(f"vmrun: {message}", file=sys.stderr, flush=True)


def load_valid_spec(path: str) -> Spec:
    from vmrun.check import validate
    from vmrun.load import load_spec

    return validate(load_spec(Path(path)), path)


def host_of(args: argparse.Namespace) -> Host:
    from vmrun.host import Host

    return Host(root=Path(args.host_root))


def places_of(args: argparse.Namespace) -> Places:
    from vmrun.locations import Places

    return Places(run_root=Path(args.run_dir), state_root=default_state_root())


def run_paths(args: argparse.Namespace, name: str) -> RunPaths:
    return places_of(args).of(name)


def cmd_validate(args: argparse.Namespace) -> int:
    errors: list[VmrunError] = []
    for path in args.specs:
        try:
            load_valid_spec(path)
        except VmrunError as error:
            errors.append(error)
        else:
            say(f"{path}: ok")
    for invalid in errors:
        report(invalid)
    return max((invalid.exit_code for invalid in errors), default=0)


def cmd_render(args: argparse.Namespace) -> int:
    from vmrun.host import default_cache_dir, gather_facts
    from vmrun.render import choose_accel, render

    spec = load_valid_spec(args.spec)
    host = host_of(args)
    try:
        qemu = host.qemu_capabilities(spec.qemu.binary, cache_dir=default_cache_dir())
    except (OSError, ValueError):
        qemu = None
        say(f"{spec.qemu.binary} not found: rendering without its capabilities (no -sandbox)")
    facts = gather_facts(host, qemu)
    argv = render(spec, facts, run_paths(args, spec.name))
    say(f"accel {choose_accel(spec, facts).accel}: {choose_accel(spec, facts).reason}")
    if spec.qemu.extra_args:
        say(f"the last {len(spec.qemu.extra_args)} arguments are qemu.extra_args, passed verbatim (not validated)")
    print(json.dumps(argv) if args.json else shlex.join(argv))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from vmrun.check import check_name
    from vmrun.spec import Spec as SpecModel
    from vmrun.starter import starter_spec

    problems = list(check_name(SpecModel(name=args.name)))
    if problems:
        raise UsageError(str(problems[0]), hint=problems[0].hint)
    target = Path(args.output or f"{args.name}.toml")
    if target.exists() and not args.force:
        raise UsageError(f"{target} already exists", hint="pass --force to overwrite it")
    target.write_text(starter_spec(args.name, str(target)))
    say(f"wrote {target}; edit it, then: vmrun validate {target}")
    return 0


def vm_name(name_or_spec: str) -> str:
    """`down` and friends take a VM name or the spec that names it."""
    if name_or_spec.endswith(".toml") or "/" in name_or_spec:
        from vmrun.load import load_spec

        return load_spec(Path(name_or_spec)).name
    return name_or_spec


def cmd_up(args: argparse.Namespace) -> int:
    from vmrun.lifecycle import up

    spec = load_valid_spec(args.spec)
    started = time.monotonic()
    up(spec, Path(args.spec).resolve(), host_of(args), places_of(args), fresh=args.fresh, say=say)
    say(f"{spec.name} is up ({time.monotonic() - started:.1f} s); stop it with: vmrun down {spec.name}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from vmrun.lifecycle import down

    name = vm_name(args.vm)
    how = down(name, host_of(args), places_of(args), timeout=args.timeout, force=args.force, say=say)
    say(f"{name} is not running" if how is None else f"{name} stopped ({how})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from vmrun.lifecycle import status

    statuses = status(host_of(args), places_of(args), [vm_name(args.vm)] if args.vm else None)
    if args.json:
        print(json.dumps([vm.to_json() for vm in statuses], indent=1))
        return 0
    if not statuses:
        say(f"no VMs under {args.run_dir}")
    from vmrun.hostinfo import ksm_stats

    ksm = ksm_stats(host_of(args))
    if ksm and ksm["run"] == 1:
        saved = ksm["bytes_saved"] / 2**20
        print(f"ksm: {ksm['pages_shared']} pages shared, {ksm['pages_sharing']} sharing, {saved:.1f} MiB saved")
    for vm in statuses:
        uptime = f"{vm.uptime:.0f}s" if vm.uptime is not None else "-"
        agent = {True: "agent ok", False: "agent unreachable", None: "-"}[vm.agent]
        pid = vm.pid or "-"
        print(f"{vm.name:<16} {vm.state:<8} pid {pid:<8} {vm.accel:<4} up {uptime:<8} {agent:<18} {vm.run_dir}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from vmrun.agent import GuestAgent
    from vmrun.lifecycle import running_paths

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise UsageError("no command given", hint="vmrun exec NAME -- CMD [ARGS...]")
    paths = running_paths(host_of(args), places_of(args), args.name)
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


def cmd_logs(args: argparse.Namespace) -> int:
    from vmrun.console import follow_log

    paths = places_of(args).of(args.name)
    if not paths.console_log.exists():
        raise UsageError(f"no console log for {args.name}", hint="vmrun status lists the VMs")
    follow_log(paths.console_log, follow=args.follow, alive=lambda: paths.pidfile.exists())
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    from vmrun.console import attach
    from vmrun.lifecycle import running_paths

    paths = running_paths(host_of(args), places_of(args), args.name)
    say("attached to the serial console; detach with Ctrl-]")
    attach(paths.console_socket)
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    from vmrun.lifecycle import host_facts, others_than
    from vmrun.preflight import apply_plan, plan_preflight, refuse

    spec = load_valid_spec(args.spec)
    host = host_of(args)
    plan = plan_preflight(spec, host, host_facts(host, spec), others=others_than(host, places_of(args), spec.name))
    print(json.dumps(plan.to_json(), indent=1) if args.json else plan.to_text())
    if args.dry_run:
        refuse(plan)
        return 0
    applied = apply_plan(plan, host)
    say(f"applied {len(applied)} change(s); `vmrun up` records and `vmrun down` undoes the changes it makes")
    return 0


def cmd_host_iommu(args: argparse.Namespace) -> int:
    import attrs

    from vmrun.hostinfo import iommu_report, iommu_text

    groups = iommu_report(host_of(args))
    print(json.dumps([attrs.asdict(group) for group in groups], indent=1) if args.json else iommu_text(groups))
    return 0


def cmd_host_check(args: argparse.Namespace) -> int:
    from vmrun.host import default_cache_dir
    from vmrun.hostinfo import check_text, host_check

    host = host_of(args)
    try:
        qemu = host.qemu_capabilities("qemu-system-x86_64", cache_dir=default_cache_dir())
    except OSError:
        qemu = None
    report = host_check(host, qemu)
    print(json.dumps(report, indent=1) if args.json else check_text(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vmrun.export import libvirt_domain, systemd_unit
    from vmrun.host import gather_facts
    from vmrun.render import choose_accel

    spec = load_valid_spec(args.spec)
    if args.format == "libvirt":
        facts = gather_facts(host_of(args), None)
        exported = libvirt_domain(spec, accel=choose_accel(spec, facts).accel, vhost_net=facts.vhost_net)
    else:
        # The vmrun beside this Python (a venv's), else the one on PATH.
        beside = Path(sys.executable).with_name("vmrun")
        vmrun = beside if beside.exists() else Path(shutil.which("vmrun") or sys.argv[0]).resolve()
        exported = systemd_unit(
            spec, spec_path=Path(args.spec).resolve(), vmrun=vmrun, run_dir=run_paths(args, spec.name).run_dir
        )
    for note in exported.notes:
        say(f"not expressible in {args.format}: {note}")
    if args.output:
        Path(args.output).write_text(exported.text)
    else:
        sys.stdout.write(exported.text)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmrun",
        description="Declarative QEMU/KVM VMs: a TOML spec in, a checked host and a running VM out.",
        epilog="Exit codes: 0 ok, 2 invalid spec or usage, 3 host refused, 4 qemu failed, "
        "5 guest agent or hook failed, 1 a bug in vmrun.",
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
    init_cmd.add_argument("--force", action="store_true", help="overwrite an existing file")
    init_cmd.set_defaults(handler=cmd_init)

    up_cmd = commands.add_parser("up", help="preflight, launch, wait for the agent, run post-boot steps")
    up_cmd.add_argument("spec", metavar="SPEC")
    up_cmd.add_argument("--fresh", action="store_true", help="start UEFI guests with fresh firmware variables")
    up_cmd.set_defaults(handler=cmd_up)

    down_cmd = commands.add_parser("down", help="stop a VM and undo its host changes")
    down_cmd.add_argument("vm", metavar="NAME|SPEC")
    down_cmd.add_argument("--timeout", type=float, default=30.0, metavar="S",
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
    exec_cmd.add_argument("--timeout", type=float, default=60.0, metavar="S", help="default: 60")
    exec_cmd.add_argument("--agent-timeout", type=float, default=10.0, metavar="S", help=argparse.SUPPRESS)
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
    export_cmd.set_defaults(handler=cmd_export)
    return parser


def report(error: VmrunError) -> None:
    for line in error.lines():
        print(f"vmrun: error: {line}", file=sys.stderr)
    if error.hint:
        print(f"vmrun: hint: {error.hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except VmrunError as error:
        if args.debug:
            raise
        report(error)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - the one place a bug becomes exit 1
        if args.debug:
            raise
        print(f"vmrun: internal error: {type(error).__name__}: {error} (rerun with --debug)", file=sys.stderr)
        return 1


def main_exit() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
