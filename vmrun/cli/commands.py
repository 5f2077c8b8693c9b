"""What each command does, between parsing its arguments and exiting: one function per command.

Commands import what they use when they run: `validate` and `render` must stay fast, so nothing
only `up` and the commands after it need (`sh`, `qemu.qmp`, asyncio, the lifecycle) is imported on
their way; tests/test_imports.py holds them to it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmrun.errors import Problem, SpecError, UsageError, VmrunError

if TYPE_CHECKING:
    import threading

    from vmrun.export import Export
    from vmrun.guest.agent import GuestInterface
    from vmrun.host.facts import HostFacts
    from vmrun.host.system import Host
    from vmrun.progress import Say
    from vmrun.run.fleet import Fate, Task
    from vmrun.spec.model import Spec
    from vmrun.state.locations import Places, RunPaths

Handler = Callable[[argparse.Namespace], int]
DRIFT_EXIT = 6  # vmrun diff: a VM differs from its spec or is not running


def say(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays machine-readable."""
    _stderr_line(f"vmrun: {message}")


def _stderr_line(line: str) -> None:
    # One write per line: VMs report from parallel threads, and print() writes the newline on its own,
    # so two threads' lines could run together. A control character (in a file name, a guest's message) is
    # written escaped: it would split the line or drive the terminal.
    import re

    sys.stderr.write(re.sub(r"[\x00-\x1f\x7f]", lambda bad: repr(bad.group())[1:-1], line) + "\n")
    sys.stderr.flush()


def load_valid_spec(path: str, args: argparse.Namespace) -> Spec:
    """The spec checked in full: its own checks, the seed files it names, and extra_args that would reach
    vmrun's files under this command's run and state roots."""
    from vmrun.guest.cloudinit import seed_file_problems
    from vmrun.spec import check
    from vmrun.state.locations import extra_args_reaching_vmrun

    def more(spec: Spec) -> list[Problem]:
        reaching = extra_args_reaching_vmrun(spec, places_of(args)) if spec.qemu.extra_args else ()
        return [*seed_file_problems(spec), *reaching]

    return check.load_valid_spec(Path(path), path, more=more)


def host_of(args: argparse.Namespace) -> Host:
    from vmrun.host.system import Host

    return Host(root=Path(args.host_root))


def places_of(args: argparse.Namespace) -> Places:
    from vmrun.state.locations import Places

    return Places(run_root=Path(args.run_dir), state_root=Path(args.state_dir), image_cache=Path(args.cache_dir))


def run_paths(args: argparse.Namespace, name: str) -> RunPaths:
    return places_of(args).of(name)


def cmd_validate(args: argparse.Namespace) -> int:
    errors: list[VmrunError] = []
    for path in args.specs:
        try:
            load_valid_spec(path, args)
        except VmrunError as error:
            errors.append(error)
        else:
            say(f"{path}: ok")
    for invalid in errors:
        report(invalid)
    return max((invalid.exit_code for invalid in errors), default=0)


def facts_for_display(args: argparse.Namespace, spec: Spec, what: str) -> HostFacts:
    """Host facts for render and export, which never run a qemu the user does not control; says what
    the output assumes when qemu was not asked."""
    from vmrun.host.facts import PrivilegeDrop, drops_privileges, gather_facts

    facts = gather_facts(host_of(args), spec.qemu.binary)
    assumed = f"{what} with default capabilities ({PrivilegeDrop.RUNAS}, no -sandbox)"
    if facts.qemu_not_run is not None:
        say(f"not probing qemu.binary {spec.qemu.binary}: {facts.qemu_not_run}; {assumed}")
    elif facts.qemu_version is None:
        say(f"{spec.qemu.binary} not found or does not run; {assumed}")
    elif drops_privileges(spec, facts) and facts.privilege_drop is PrivilegeDrop.IMPOSSIBLE:
        say(f"warning: {spec.qemu.binary} has {facts.privilege_drop}: up refuses to start it as root")
    return facts


def cmd_render(args: argparse.Namespace) -> int:
    from vmrun.host.facts import choose_accel
    from vmrun.qemu.render import render

    spec = load_valid_spec(args.spec, args)
    facts = facts_for_display(args, spec, "rendering")
    argv = render(spec, facts, run_paths(args, spec.name))
    accel = choose_accel(spec, facts)
    say(f"accel {accel.accel}: {accel.reason}")
    if spec.qemu.extra_args:
        say(f"the last {len(spec.qemu.extra_args)} arguments are qemu.extra_args, passed verbatim "
            "(only the options vmrun refuses are checked)")
    print(json.dumps(argv) if args.json else shlex.join(argv))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import os

    from vmrun.cli.starter import invoking_user, public_keys, starter_spec, starter_user_data, user_data_file
    from vmrun.spec.check import check_name
    from vmrun.spec.images import is_url
    from vmrun.spec.model import Spec as SpecModel

    problems = list(check_name(SpecModel(name=args.name)))
    if problems:
        raise UsageError(str(problems[0]), hint=problems[0].hint)
    digest = checked_image_url(args.base, args.digest) if args.base and is_url(args.base) else None
    target = Path(args.output or f"{args.name}.toml")
    user_data = target.parent / user_data_file(args.name) if args.base else None
    for path in (target, user_data):
        if path is not None and path.exists() and not args.force:
            raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    if args.base:
        # As the spec will name it: relative to the spec's directory, as every relative path in a spec is.
        base = args.base if digest else os.path.relpath(Path(args.base).resolve(), target.parent.resolve())
        user, home = invoking_user(host_of(args), os.environ)
        keys = public_keys(home)
        assert user_data is not None
        user_data.write_text(starter_user_data(user, keys))
        say(f"wrote {user_data}: user {user}, {len(keys)} SSH key(s), sudo")
    target.write_text(starter_spec(args.name, str(target), base=base if args.base else None, digest=digest))
    say(f"wrote {target}; edit it, then: vmrun validate {target}")
    return 0


def vm_name(name_or_spec: str) -> str:
    """`down` and friends take a VM name or the spec that names it; either way the name rule holds."""
    from vmrun.spec.naming import VM_NAME_RULE, is_vm_name

    if name_or_spec.endswith(".toml") or "/" in name_or_spec:
        from vmrun.spec.load import load_spec

        name = load_spec(Path(name_or_spec)).name
        if not is_vm_name(name):
            raise UsageError(f"{name_or_spec}: name: {name!r} is not a valid VM name", hint=VM_NAME_RULE)
        return name
    if not is_vm_name(name_or_spec):
        raise UsageError(f"{name_or_spec!r} is neither a VM name nor a spec file", hint=VM_NAME_RULE)
    return name_or_spec


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


def cmd_up(args: argparse.Namespace) -> int:
    import time

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

    specs, refused = load_valid_specs(args)
    tasks = [(spec.name, task_for(spec, path)) for path, spec in specs]
    return _finish(refused + run_all(tasks, jobs=args.jobs, say=say, report=_reporter(args)), as_json=args.json)


def load_valid_specs(args: argparse.Namespace) -> tuple[list[tuple[Path, Spec]], list[Fate]]:
    """Every SPEC and each DIR's specs (args.specs), validated; an invalid one (or a second spec of one name) is
    reported and becomes a refused fate, and the others go on."""
    from vmrun.run.fleet import Fate, spec_files

    specs: dict[str, tuple[Path, Spec]] = {}
    refused: list[Fate] = []
    for path in spec_files(args.specs):
        try:
            spec = load_valid_spec(str(path), args)
            if spec.name in specs:
                raise UsageError(f"{path}: name: another spec here is also called {spec.name!r}")
        except VmrunError as error:
            report(error)
            refused.append(Fate.of_error(str(path), f"invalid (exit {error.exit_code})", error, result="invalid"))
            continue
        specs[spec.name] = (path, spec)
    return list(specs.values()), refused


def vm_names_of(args: argparse.Namespace) -> list[str]:
    """NAME, SPEC and DIR arguments as VM names; --all: every VM with a run directory."""
    if args.all:
        from vmrun.state.vmstate import vm_names

        return vm_names(places_of(args).run_root)
    from vmrun.run.fleet import spec_files

    if not args.vms:
        raise UsageError("name the VMs to stop", hint="vmrun down NAME|SPEC|DIR... or vmrun down --all")
    names: list[str] = []
    for argument in args.vms:
        if Path(argument).is_dir():
            names += [vm_name(str(path)) for path in spec_files([argument])]
        else:
            names.append(vm_name(argument))
    return list(dict.fromkeys(names))


def cmd_down(args: argparse.Namespace) -> int:
    from vmrun.run.fleet import Fate, run_all
    from vmrun.run.lifecycle import down

    host, places = host_of(args), places_of(args)

    def task_for(name: str) -> Task:
        def task(say: Say, interrupted: threading.Event) -> Fate:
            how = down(name, host, places, timeout=args.timeout, force=args.force, say=say)
            say(f"{name} is not running" if how is None else f"{name} stopped ({how})")
            return Fate(name, "not running") if how is None else Fate(name, f"stopped ({how})", result="stopped")
        return task

    names = vm_names_of(args)
    if args.dry_run:
        from vmrun.state.vmstate import has_run

        fates = [Fate(name, "would stop", result="stopped") if has_run(places.of(name)) else Fate(name, "not running")
                 for name in names]
        for fate in fates:
            say(f"{fate.name}: {fate.outcome} (dry run: nothing stopped)")
        return _finish(fates, as_json=args.json)
    return _finish(run_all([(name, task_for(name)) for name in names], jobs=None, say=say,
                           report=_reporter(args)), as_json=args.json)


def cmd_diff(args: argparse.Namespace) -> int:
    from vmrun.run.lifecycle import drift

    host, places = host_of(args), places_of(args)
    rows: list[dict[str, Any]] = []
    specs, refused = load_valid_specs(args)
    for path, spec in specs:
        changed = drift(spec, path.resolve(), host, places)
        status = "not running" if changed is None else "differs" if changed else "up to date"
        rows.append({"name": spec.name, "spec": str(path), "status": status, "differences": changed or []})
    if args.json:
        # An invalid spec is a row too, named by its path as up names it, with the errors up would refuse it with.
        invalid = [{"name": fate.name, "spec": fate.name, "status": "invalid", "differences": [],
                    "errors": list(fate.errors), "hint": fate.hint} for fate in refused]
        print(json.dumps(invalid + rows, indent=1))
    else:
        for row in rows:
            print(f"{row['name']}: {row['status']}" + "".join(f"\n  {line}" for line in row["differences"]))
    if refused:
        return UsageError.exit_code
    return 0 if all(row["status"] == "up to date" for row in rows) else DRIFT_EXIT


def cmd_status(args: argparse.Namespace) -> int:
    from vmrun.run.status import status

    if args.names:
        from vmrun.state.vmstate import vm_names

        for name in vm_names(places_of(args).run_root):
            print(name)
        return 0
    statuses = status(host_of(args), places_of(args), [vm_name(args.vm)] if args.vm else None)
    if args.json:
        print(json.dumps([vm.to_json() for vm in statuses], indent=1))
        return 0
    if not statuses:
        say(f"no VMs under {args.run_dir}")
    ksm = host_of(args).ksm_stats()
    if ksm and ksm["run"] == 1:
        saved = ksm["bytes_saved"] / 2**20
        print(f"ksm: {ksm['pages_shared']} pages shared, {ksm['pages_sharing']} sharing, {saved:.1f} MiB saved")
    for vm in statuses:
        uptime = f"{vm.uptime:.0f}s" if vm.uptime is not None else "-"
        agent = {True: "agent ok", False: "agent unreachable", None: "-"}[vm.agent]
        pid = vm.pid or "-"
        addresses = " ".join(f"{interface} {','.join(ips)}" for interface, ips in vm.addresses.items())
        print(f"{vm.name:<16} {vm.state:<8} pid {pid:<8} {vm.accel:<4} up {uptime:<8} {agent:<18} {vm.run_dir}"
              f"{'  ' + addresses if addresses else ''}" + "".join(f"\n  host drift: {line}" for line in vm.host_drift)
              + "".join(f"\n  forward: {forward}" for forward in vm.forwards))
    return 0


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
    from vmrun.guest.ssh import KNOWN_HOSTS, guest_user, invoking_user_name, private_keys, ssh_argv, ssh_target
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
    argv = ssh_argv(address=address, port=port, user=args.user or guest_user(spec, invoking_user_name(os.environ)),
                    known_hosts=paths.state_dir / KNOWN_HOSTS, identities=identities,
                    command=args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(program, argv)


def cmd_cp(args: argparse.Namespace) -> int:
    from vmrun.guest.copy import copy, endpoints
    from vmrun.run.status import running_paths

    vm, source, destination = endpoints(args.source, args.destination)
    paths = running_paths(host_of(args), places_of(args), vm)
    copy(vm, source, destination, paths.agent_socket, recursive=args.recursive,
         agent_timeout=args.agent_timeout, say=say)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from vmrun.qemu.console import follow_log

    paths = places_of(args).of(vm_name(args.name))
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


def cmd_preflight(args: argparse.Namespace) -> int:
    from vmrun.host.facts import gather_facts
    from vmrun.preflight.plan import Plan, plan_preflight, refuse
    from vmrun.run.lifecycle import others_than, prepare

    spec = load_valid_spec(args.spec, args)
    host, places = host_of(args), places_of(args)

    def show(plan: Plan) -> None:
        print(json.dumps(plan.to_json(), indent=1) if args.json else plan.to_text(), flush=True)

    if args.dry_run:
        facts = gather_facts(host, spec.qemu.binary)
        plan = plan_preflight(on_cached_bases(spec, places), host, facts,
                              others=others_than(host, places, spec.name), run_dir=places.of(spec.name).run_dir)
        show(plan)
        refuse(plan)
        return 0
    state = prepare(spec, Path(args.spec).resolve(), host, places, show=show, say=say)
    say(f"applied {len(state.changes)} change(s); `vmrun down {spec.name}` undoes them")
    return 0


def cmd_host_iommu(args: argparse.Namespace) -> int:
    import attrs

    from vmrun.preflight.report import iommu_report, iommu_text

    groups = iommu_report(host_of(args))
    print(json.dumps([attrs.asdict(group) for group in groups], indent=1) if args.json else iommu_text(groups))
    return 0


def cmd_host_check(args: argparse.Namespace) -> int:
    from vmrun.host.facts import probe_qemu
    from vmrun.preflight.report import check_text, host_check

    host = host_of(args)
    report = host_check(host, probe_qemu(host, "qemu-system-x86_64", asked_to_run=False))
    print(json.dumps(report, indent=1) if args.json else check_text(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import shutil

    from vmrun.export.libvirt import libvirt_domain
    from vmrun.export.systemd import systemd_unit
    from vmrun.host.facts import choose_accel

    if args.define and args.format != "libvirt":
        raise UsageError("--define goes with --format libvirt")
    if args.format == "kubevirt":
        return _write_export(args, kubevirt_export(args))
    if Path(args.spec).is_dir():
        raise UsageError(f"{args.spec} is a directory", hint="one spec, or a directory with --format kubevirt")
    spec = load_valid_spec(args.spec, args)
    if args.format == "libvirt":
        spec = on_cached_bases(spec, places_of(args))  # libvirt's backingStore is the cached file
        facts = facts_for_display(args, spec, "exporting")
        exported = libvirt_domain(spec, accel=choose_accel(spec, facts).accel, vhost_net=facts.vhost_net,
                                  seed=run_paths(args, spec.name).cloud_init_seed)
    else:
        # The vmrun beside this Python (a venv's), else the one on PATH.
        beside = Path(sys.executable).with_name("vmrun")
        vmrun = beside if beside.exists() else Path(shutil.which("vmrun") or sys.argv[0]).resolve()
        exported = systemd_unit(
            spec, spec_path=Path(args.spec).resolve(), vmrun=vmrun, run_dir=run_paths(args, spec.name).run_dir
        )
    _write_export(args, exported)
    if args.define:
        define_domain(host_of(args), exported.text, spec_path=args.spec, name=spec.name)
    return 0


def _write_export(args: argparse.Namespace, exported: Export) -> int:
    for note in exported.notes:
        say(f"not expressible in {args.format}: {note}")
    if args.output:
        Path(args.output).write_text(exported.text)
    else:
        sys.stdout.write(exported.text)
    return 0


def kubevirt_export(args: argparse.Namespace) -> Export:
    """SPEC, or every spec in DIR, as one stream of KubeVirt manifests; nothing when any spec is invalid or
    cannot be mapped (every such problem reported, exit 2)."""
    from vmrun.export.kubevirt import CloudInitTexts, kubevirt_manifests, unmappable
    from vmrun.guest.cloudinit import seed_texts
    from vmrun.run.fleet import spec_files

    specs: dict[str, tuple[str, Spec, CloudInitTexts]] = {}
    refused: list[VmrunError] = []
    for path in spec_files([args.spec]):
        try:
            spec = load_valid_spec(str(path), args)
            problems = unmappable(spec)
            if problems:
                raise SpecError(str(path), problems)
            if spec.name in specs:
                raise UsageError(f"{path}: name: another spec here is also called {spec.name!r}")
            texts = seed_texts(spec, str(path)) if spec.cloud_init is not None else {}
        except VmrunError as error:
            refused.append(error)
            continue
        specs[spec.name] = (str(path), spec, CloudInitTexts.of(texts))
    if not refused:
        return kubevirt_manifests(list(specs.values()))
    for failure in refused[:-1]:
        report(failure)
    raise refused[-1]


def define_domain(host: Host, xml: str, *, spec_path: str, name: str) -> None:
    """A convenience only: the XML stays the contract, and libvirt's own client defines it."""
    from vmrun.errors import PreflightError
    from vmrun.host.system import HostCommandError

    try:
        host.run(["virsh", "define", "/dev/stdin"], stdin=xml)
    except HostCommandError as exc:
        said = "; ".join(line.removeprefix("error: ") for line in str(exc).splitlines() if line.strip())
        raise PreflightError(f"{spec_path}: virsh define: {said}") from exc
    say(f"defined the libvirt domain {name}; start it with: virsh start {name}")


def report(error: VmrunError, *, prefix: str = "") -> None:
    for line in error.lines():
        _stderr_line(f"vmrun: error: {'' if line.startswith(prefix) else prefix}{line}")
    if error.hint:
        _stderr_line(f"vmrun: hint: {prefix}{error.hint}")


def on_cached_bases(spec: Spec, places: Places) -> Spec:
    """For the commands that show a plan without fetching: the spec with its URL bases at their places in the
    image cache, after saying which are not downloaded yet."""
    from vmrun.spec.images import url_bases, with_cached_bases

    for found in url_bases(spec):
        if not (places.image_cache / found.digest.file_name).is_file():
            say(f"disks[{found.index}].base {found.url} is not in the image cache {places.image_cache} yet: "
                f"vmrun up downloads it (or: vmrun image pull {found.url} --digest {found.digest})")
    return with_cached_bases(spec, places.image_cache)


def checked_image_url(url: str, digest: str | None) -> str:
    """A URL and its --digest from the command line, as a spec would need them; the digest."""
    from vmrun.spec.images import DIGEST_FORM, digest_problem, url_problem

    problem = url_problem(url) or (digest_problem(digest) if digest else None)
    if problem is not None:
        raise UsageError(problem)
    if digest is None:
        raise UsageError(f"{url}: --digest is required with a URL: vmrun boots no image it has not verified",
                         hint=f"--digest {DIGEST_FORM}")
    return digest


def cmd_image_pull(args: argparse.Namespace) -> int:
    from vmrun.run.imagecache import ImageCache, bases_in_use
    from vmrun.spec.images import is_url, parse_digest, url_bases

    cache = ImageCache(places_of(args).image_cache)
    if is_url(args.source):
        digest = parse_digest(checked_image_url(args.source, args.digest))
        assert digest is not None
        with cache.using(args.source, digest, say) as path:
            print(path)
        return 0
    if args.digest:
        raise UsageError("--digest goes with a URL; a spec names its digests itself")
    spec = load_valid_spec(args.source, args)
    if not url_bases(spec):
        say(f"{args.source}: no disk has a base given by URL; nothing to fetch")
    with bases_in_use(spec, cache, say):
        pass
    for found in url_bases(spec):
        print(cache.path_of(found.digest))
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    from vmrun.run.imagecache import ImageCache, image_users
    from vmrun.units import format_bytes

    places = places_of(args)
    images = ImageCache(places.image_cache).images()
    users = image_users(places)
    rows = [{"digest": str(image.digest), "path": str(image.path), "size": image.size, "url": image.url,
             "used_by": users.of(image.digest)} for image in images]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        say(f"no images in {places.image_cache}")
    for image in images:
        used = ", ".join(users.of(image.digest)) or "unused"
        print(f"{str(image.digest)[:19]}…  {format_bytes(image.size):>10}  {used:<16}  {image.url or '?'}")
    for name in users.unknown:
        say(f"{name}: its state file is damaged, so which images it uses is unknown")
    return 0


IN_USE_NOW = "a vmrun up (or preflight) is using it right now"


def cmd_image_rm(args: argparse.Namespace) -> int:
    from vmrun.run.imagecache import ImageCache, image_users
    from vmrun.spec.images import digest_problem, parse_digest

    places = places_of(args)
    cache = ImageCache(places.image_cache)
    if args.unused == bool(args.digests):
        raise UsageError("name the images to remove, or --unused", hint="vmrun image rm DIGEST... | --unused")
    if args.unused:
        digests = [image.digest for image in cache.images()]
    else:
        digests = []
        for text in args.digests:
            digest = parse_digest(text)
            if digest is None:
                raise UsageError(digest_problem(text) or text, hint="vmrun image list shows the cached digests")
            digests.append(digest)
    digests = list(dict.fromkeys(digests))  # one lock each
    missing = [digest for digest in digests if not cache.path_of(digest).is_file()]
    with ExitStack() as held:
        # An `up` holds its images' locks from finding them until its state names them: with the locks, the
        # states read next name every image in use.
        busy = [digest for digest in digests if digest not in missing and not held.enter_context(
            cache.unused_now(digest))]
        users = image_users(places)
        if users.unknown:
            raise UsageError(f"which images {', '.join(users.unknown)} use is unknown (damaged state)",
                             hint="vmrun down --force them first")
        if args.unused:
            for digest in busy:
                say(f"kept {digest}: {IN_USE_NOW}")
            digests = [digest for digest in digests if digest not in busy and not users.of(digest)]
        elif busy:
            raise UsageError(f"cannot remove {', '.join(map(str, busy))}: {IN_USE_NOW}",
                             hint="vmrun image list names the VM once it has started")
        for digest in digests:
            if users.of(digest):
                raise UsageError(f"{digest} is the base of {', '.join(users.of(digest))}",
                                 hint=f"vmrun down {' '.join(users.of(digest))} first")
        for digest in digests:
            if digest not in missing:
                cache.remove(digest)
                say(f"removed {digest}")
    if missing:
        raise UsageError(f"not in the image cache {places.image_cache}: {', '.join(map(str, missing))}")
    if not digests:
        say("no unused images")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from vmrun.cli.completion import completion_script

    sys.stdout.write(completion_script(args.shell))
    return 0


def cmd_man(args: argparse.Namespace) -> int:
    from vmrun.cli.completion import man_page

    sys.stdout.write(man_page())
    return 0
