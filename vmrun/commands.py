"""What each command does, between parsing its arguments and exiting: one function per command.

Commands import what they use when they run: `validate` and `render` must stay fast,
so neither `sh` nor `qemu.qmp` (~70 ms each) is imported on their way.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vmrun.errors import UsageError, VmrunError

if TYPE_CHECKING:
    from vmrun.host import Host
    from vmrun.locations import Places, RunPaths
    from vmrun.spec import Spec

Handler = Callable[[argparse.Namespace], int]


def say(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays machine-readable."""
    print(f"vmrun: {message}", file=sys.stderr, flush=True)


def load_valid_spec(path: str) -> Spec:
    from vmrun import check

    return check.load_valid_spec(Path(path), path)


def host_of(args: argparse.Namespace) -> Host:
    from vmrun.host import Host

    return Host(root=Path(args.host_root))


def places_of(args: argparse.Namespace) -> Places:
    from vmrun.locations import Places

    return Places(run_root=Path(args.run_dir), state_root=Path(args.state_dir))


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
    from vmrun.facts import choose_accel, gather_facts
    from vmrun.render import render

    spec = load_valid_spec(args.spec)
    facts = gather_facts(host_of(args), spec.qemu.binary)
    if facts.qemu_version is None:
        say(f"{spec.qemu.binary} not found: rendering without its capabilities (no -sandbox)")
    argv = render(spec, facts, run_paths(args, spec.name))
    accel = choose_accel(spec, facts)
    say(f"accel {accel.accel}: {accel.reason}")
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
    from vmrun.facts import gather_facts
    from vmrun.lifecycle import others_than
    from vmrun.preflight import apply_plan, plan_preflight, refuse

    spec = load_valid_spec(args.spec)
    host = host_of(args)
    facts = gather_facts(host, spec.qemu.binary)
    plan = plan_preflight(spec, host, facts, others=others_than(host, places_of(args), spec.name))
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
    from vmrun.hostinfo import check_text, host_check

    host = host_of(args)
    report = host_check(host, host.qemu_capabilities("qemu-system-x86_64"))
    print(json.dumps(report, indent=1) if args.json else check_text(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vmrun.export import libvirt_domain, systemd_unit
    from vmrun.facts import choose_accel, gather_facts

    spec = load_valid_spec(args.spec)
    if args.format == "libvirt":
        facts = gather_facts(host_of(args), spec.qemu.binary)
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


def report(error: VmrunError) -> None:
    for line in error.lines():
        print(f"vmrun: error: {line}", file=sys.stderr)
    if error.hint:
        print(f"vmrun: hint: {error.hint}", file=sys.stderr)
