"""The commands that bring VMs to their specs and report on them: up, down, diff, status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmrun.cli.common import host_of, places_of, report, say, spec_checker, vm_name
from vmrun.errors import SpecError, UsageError, VmrunError

if TYPE_CHECKING:
    import threading

    from vmrun.progress import Say
    from vmrun.run.fleet import Fate, Task
    from vmrun.spec.model import Spec


DRIFT_EXIT = 6  # vmrun diff: a VM differs from its spec or is not running


def cmd_up(args: argparse.Namespace) -> int:
    import time

    from vmrun.qemu.process import load_launcher

    load_launcher()  # sh's import reads files while the specs load, and needs no spec
    from vmrun.run.fleet import Fate, run_all
    from vmrun.run.lifecycle import Outcome, up

    host, places = host_of(args), places_of(args)

    def task_for(spec: Spec, path: Path) -> Task:
        def task(say: Say, interrupted: threading.Event) -> Fate:
            started = time.monotonic()
            outcome = up(spec, path.resolve(), host, places, fresh=args.fresh, restart=args.restart,
                         stop_timeout=args.timeout, say=say, interrupted=interrupted)
            if outcome is Outcome.UP_TO_DATE:
                say(f"{spec.name}: up to date")
            else:
                say(f"{spec.name} is up ({time.monotonic() - started:.1f} s); stop it with: vmrun down {spec.name}")
            return Fate(spec.name, str(outcome))
        return task

    import attrs

    specs, refused = load_valid_specs(args)
    tasks = [(spec.name, task_for(spec, path)) for path, spec in specs]
    spec_of = {spec.name: str(path) for path, spec in specs}
    fates = [attrs.evolve(fate, spec=spec_of.get(fate.name)) for fate in run_all(tasks, jobs=args.jobs, say=say,
                                                                                  report=_reporter(args))]
    return _finish(refused + fates, as_json=args.json)


def load_valid_specs(args: argparse.Namespace) -> tuple[list[tuple[Path, Spec]], list[Fate]]:
    """Every SPEC and each DIR's specs (args.specs), validated; an invalid one (or a second spec of one name) is
    reported and becomes a refused fate, and the others go on."""
    import attrs

    from vmrun.run.fleet import Fate
    from vmrun.spec.load import spec_files

    specs: dict[str, tuple[Path, Spec]] = {}
    refused: list[Fate] = []
    checked = spec_checker(args)
    for path in spec_files(args.specs):
        try:
            spec = checked(str(path))
            if spec.name in specs:
                raise UsageError(f"{path}: name: another spec here is also called {spec.name!r}")
        except VmrunError as error:
            report(error)
            refused.append(attrs.evolve(Fate.of_error(str(path), f"invalid (exit {error.exit_code})", error,
                                                      result="invalid"), spec=str(path)))
            continue
        specs[spec.name] = (path, spec)
    return list(specs.values()), refused


def vm_names_of(args: argparse.Namespace) -> list[str]:
    """NAME, SPEC and DIR arguments as VM names; --all: every VM with a run directory."""
    if args.all:
        from vmrun.state.glance import vm_names

        return vm_names(places_of(args).run_root)
    from vmrun.spec.load import spec_files

    if not args.vms:
        raise UsageError("name the VMs to stop", hint="vmrun down NAME|SPEC|DIR... or vmrun down --all")
    names: list[str] = []
    for argument in args.vms:
        if Path(argument).is_dir():
            names += [vm_name(str(path)) for path in spec_files([argument])]
        else:
            names.append(vm_name(argument))
    return list(dict.fromkeys(names))


def _reporter(args: argparse.Namespace) -> Callable[[str, Exception], None]:
    """How a VM's failure is told: one line per error, and a bug in vmrun as cli.main tells it (with --debug,
    raised on, for its traceback)."""

    def report_fate(label: str, error: Exception) -> None:
        prefix = f"{label}: " if label and not isinstance(error, SpecError) else ""
        if isinstance(error, VmrunError):
            report(error, prefix=prefix)
        elif args.debug:
            raise error
        else:
            print(f"vmrun: internal error: {prefix}{type(error).__name__}: {error} (rerun with --debug)",
                  file=sys.stderr)

    return report_fate


def _finish(fates: list[Fate], *, as_json: bool) -> int:
    from vmrun.run.fleet import summary, worst

    if len(fates) > 1:
        say(summary(fates))
    if as_json:
        print(json.dumps([fate.to_json() for fate in fates], indent=1))
    return worst([fate.exit_code for fate in fates])


def cmd_down(args: argparse.Namespace) -> int:
    from vmrun.run.ending import down
    from vmrun.run.fleet import Fate, run_all

    host, places = host_of(args), places_of(args)

    def task_for(name: str) -> Task:
        def task(say: Say, interrupted: threading.Event) -> Fate:
            how = down(name, host, places, timeout=args.timeout, force=args.force, say=say)
            say(f"{name} is not running" if how is None else f"{name} stopped ({how})")
            return Fate(name, "not running") if how is None else Fate(name, f"stopped ({how})", result="stopped")
        return task

    names = vm_names_of(args)
    if args.dry_run:
        from vmrun.state.glance import has_run

        fates = [Fate(name, "would stop", result="stopped") if has_run(places.of(name)) else Fate(name, "not running")
                 for name in names]
        for fate in fates:
            say(f"{fate.name}: {fate.outcome} (dry run: nothing stopped)")
        return _finish(fates, as_json=args.json)
    return _finish(run_all([(name, task_for(name)) for name in names], jobs=None, say=say,
                           report=_reporter(args)), as_json=args.json)


def cmd_diff(args: argparse.Namespace) -> int:
    from vmrun.run.lifecycle import drift
    from vmrun.run.status import vm_state

    host, places = host_of(args), places_of(args)
    rows: list[dict[str, Any]] = []
    specs, refused = load_valid_specs(args)
    for path, spec in specs:
        changed = drift(spec, path.resolve(), host, places)
        # drift: null where nothing runs to compare; state: the word `status` uses (stopped: no run here).
        rows.append({"name": spec.name, "spec": str(path),
                     "state": "running" if changed is not None else vm_state(host, places, spec.name),
                     "drift": None if changed is None else "differs" if changed else "up to date",
                     "differences": changed or []})
    if args.json:
        # An invalid spec is a row too, named by its path as up names it, with the errors up would refuse it with.
        invalid = [{"name": fate.name, "spec": fate.name, "state": None, "drift": None, "differences": [],
                    "errors": list(fate.errors), "hint": fate.hint} for fate in refused]
        print(json.dumps(invalid + rows, indent=1))
    else:
        for row in rows:
            differences = "".join(f"\n  {line}" for line in row["differences"])
            print(f"{row['name']}: {row['drift'] or 'not running'}{differences}")
    if refused:
        return UsageError.exit_code
    return 0 if all(row["drift"] == "up to date" for row in rows) else DRIFT_EXIT


def cmd_status(args: argparse.Namespace) -> int:
    from vmrun.host.view import ReadOnlyHost
    from vmrun.run.status import AGENT_PROBE_TIMEOUT, status

    if args.names:
        from vmrun.state.glance import vm_names

        for name in vm_names(places_of(args).run_root):
            print(name)
        return 0
    host = ReadOnlyHost(Path(args.host_root))
    names = list(dict.fromkeys(vm_name(vm) for vm in args.vms))
    statuses = status(host, places_of(args), names, addresses=args.addresses)
    silent = [vm.name for vm in statuses if vm.agent is False]
    if silent:
        say(f"the guest agent of {', '.join(silent)} did not answer within {AGENT_PROBE_TIMEOUT:g} s")
    if args.json:
        print(json.dumps([vm.to_json(addresses=args.addresses) for vm in statuses], indent=1))
        return 0
    if not statuses:
        say(f"no VMs under {args.run_dir}")
    ksm = host.ksm_stats()
    if ksm and ksm["run"] == 1:
        saved = ksm["bytes_saved"] / 2**20
        print(f"ksm: {ksm['pages_shared']} pages shared, {ksm['pages_sharing']} sharing, {saved:.1f} MiB saved")
    for vm in statuses:
        uptime = f"{vm.uptime:.0f}s" if vm.uptime is not None else "-"
        agent = {True: "agent ok", False: "agent unreachable", None: ""}[vm.agent]
        addresses = " ".join(f"{interface} {','.join(ips)}" for interface, ips in (vm.addresses or {}).items())
        print(f"{vm.name:<16} {vm.state:<8} pid {vm.pid or '-':<8} {vm.accel:<4} up {uptime:<8} {vm.run_dir}"
              + "".join(f"  {part}" for part in (agent, addresses) if part)
              + "".join(f"\n  forward: {forward}" for forward in vm.forwards))
    return 0
