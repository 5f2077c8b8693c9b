"""Command line: the only place that catches VmrunError, prints it and picks the exit code."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vmrun import __version__
from vmrun.check import validate
from vmrun.errors import UsageError, VmrunError
from vmrun.host import Host, default_cache_dir, gather_facts
from vmrun.load import load_spec
from vmrun.locations import default_run_root, default_state_root
from vmrun.render import RunPaths, choose_accel, render
from vmrun.spec import Spec

Handler = Callable[[argparse.Namespace], int]


def say(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays machine-readable."""
    print(f"vmrun: {message}", file=sys.stderr, flush=True)


def load_valid_spec(path: str) -> Spec:
    return validate(load_spec(Path(path)), path)


def host_of(args: argparse.Namespace) -> Host:
    return Host(root=Path(args.host_root))


def run_paths(args: argparse.Namespace, name: str) -> RunPaths:
    return RunPaths(run_dir=Path(args.run_dir) / name, state_dir=default_state_root() / name)


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
