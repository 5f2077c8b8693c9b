"""The commands that read specs and write something else: validate, render, init, export."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vmrun.cli.common import (
    checked_image_url,
    checked_spec,
    error_json,
    facts_for_display,
    host_of,
    on_cached_bases,
    places_of,
    print_json,
    report,
    run_paths,
    say,
    spec_checker,
    writable_file,
    write_file,
)
from vmrun.errors import SpecError, UsageError, VmrunError

if TYPE_CHECKING:
    from vmrun.export import Export
    from vmrun.host.system import Host
    from vmrun.spec.model import Spec


def cmd_validate(args: argparse.Namespace) -> int:
    import os

    from vmrun.spec.load import spec_files
    from vmrun.spec.usernet import privileged_forwards

    errors: list[VmrunError] = []
    rows: list[dict[str, object]] = []
    checked = spec_checker(args)
    warn_of_privileged_ports = os.geteuid() != 0
    for path in map(str, spec_files(args.specs)):
        try:
            spec = checked(path)
        except VmrunError as error:
            errors.append(error)
            rows.append({"spec": path, "name": None, "valid": False, **error_json(error), "warnings": []})
            continue
        say(f"{path}: ok")
        # Valid for root, so a warning: whoever runs `up` decides.
        warnings = [str(warning) for warning in privileged_forwards(spec)] if warn_of_privileged_ports else []
        for warning in warnings:
            say(f"warning: {path}: {warning}")
        rows.append({"spec": path, "name": spec.name, "valid": True, "errors": [], "hint": None,
                     "warnings": warnings})
    for invalid in errors:
        report(invalid)
    if args.json:
        print_json(rows)
    return max((invalid.exit_code for invalid in errors), default=0)


def cmd_render(args: argparse.Namespace) -> int:
    from vmrun.host.facts import choose_accel
    from vmrun.qemu.render import render
    from vmrun.spec.usernet import auto_forwards

    spec = checked_spec(args.spec, args)
    facts = facts_for_display(args, spec, "rendering")
    argv = render(spec, facts, run_paths(args, spec.name))
    accel = choose_accel(spec, facts)
    say(f"accel {accel.accel}: {accel.reason}")
    for where, forward in auto_forwards(spec):
        say(f"{where} ({forward.text}): vmrun up picks a free host port; shown here as 0")
    if spec.qemu.extra_args:
        say(f"the last {len(spec.qemu.extra_args)} arguments are qemu.extra_args, passed verbatim "
            "(only the options vmrun refuses are checked)")
    print(json.dumps(argv) if args.json else shlex.join(argv))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import os

    from vmrun.cli.starter import ROOT_STANDIN, starter_spec, starter_user_data, user_data_file
    from vmrun.host.user import invoking_home, invoking_user, public_keys
    from vmrun.spec.check import check_name
    from vmrun.spec.images import is_url
    from vmrun.spec.model import Spec as SpecModel

    problems = list(check_name(SpecModel(name=args.name)))
    if problems:
        # The hint goes on its own line, not also inside the message.
        raise UsageError(f"{problems[0].path}: {problems[0].message}", hint=problems[0].hint)
    digest = checked_image_url(args.base, args.digest) if args.base and is_url(args.base) else None
    target = Path(args.output or f"{args.name}.toml")
    user_data = target.parent / user_data_file(args.name) if args.base else None
    for path in (target, user_data):
        if path is None:
            continue
        writable_file(path)
        if path.exists() and not args.force:
            raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    user: str | None = None
    keys: list[str] = []
    if args.base:
        # As the spec will name it: relative to the spec's directory, as every relative path in a spec is.
        base = args.base if digest else os.path.relpath(Path(args.base).resolve(), target.parent.resolve())
        host = host_of(args)
        name = invoking_user(host, os.environ)
        home = invoking_home(host, os.environ)
        keys = public_keys(home)
        user = ROOT_STANDIN if name == "root" else name
        assert user_data is not None
        write_file(user_data, starter_user_data(user, keys))
        say(f"wrote {user_data}: user {user}, {len(keys)} SSH key(s), sudo")
        if not keys:
            _no_key(name, home, user_data, running_as=host.current_user().name)
    write_file(target, starter_spec(args.name, str(target), base=base if args.base else None, digest=digest))
    say(f"wrote {target}; edit it, then: vmrun validate {target}")
    if args.json:
        print_json({"name": args.name, "spec": str(target), "user_data": str(user_data) if user_data else None,
                    "user": user, "ssh_keys": len(keys) if args.base else None,
                    "base": args.base})
    return 0


def _no_key(name: str, home: Path | None, user_data: Path, *, running_as: str) -> None:
    """Without a key in the user-data, nothing logs in to the guest: say how to make one, as who."""
    from vmrun.host.user import PUBLIC_KEY_FILES

    where = home / ".ssh" if home is not None else Path("~/.ssh")
    as_user = f"sudo -u {name} " if name != running_as else ""
    say(f"no SSH public key found in {where} ({', '.join(PUBLIC_KEY_FILES)}): nobody can log in to the guest "
        f"with `vmrun ssh`; make one with: {as_user}ssh-keygen -t ed25519 -f {where}/id_ed25519 -N ''"
        f" (then run this init again with --force, or add the key to {user_data})")


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
    spec = checked_spec(args.spec, args)
    if args.format == "libvirt":
        spec = on_cached_bases(spec, places_of(args))  # libvirt's backingStore is the cached file
        facts = facts_for_display(args, spec, "exporting")
        exported = libvirt_domain(spec, accel=choose_accel(spec, facts).accel, vhost_net=facts.vhost_net,
                                  seed=run_paths(args, spec.name).cloud_init_seed)
    else:
        # The vmrun beside this Python (a venv's), else the one on PATH.
        beside = Path(sys.executable).with_name("vmrun")
        vmrun = beside if beside.exists() else Path(shutil.which("vmrun") or sys.argv[0]).resolve()
        exported = systemd_unit(spec, spec_path=Path(args.spec).resolve(), vmrun=vmrun,
                                paths=run_paths(args, spec.name), image_cache=Path(args.cache_dir).resolve())
    _write_export(args, exported)
    if args.define:
        define_domain(host_of(args), exported.text, spec_path=args.spec, name=spec.name)
    return 0


def _write_export(args: argparse.Namespace, exported: Export) -> int:
    for note in exported.notes:
        say(f"not expressible in {args.format}: {note}")
    if args.output:
        write_file(Path(args.output), exported.text)
    else:
        sys.stdout.write(exported.text)
    return 0


def kubevirt_export(args: argparse.Namespace) -> Export:
    """SPEC, or every spec in DIR, as one stream of KubeVirt manifests; nothing when any spec is invalid or
    cannot be mapped (every such problem reported, exit 2)."""
    from vmrun.export.kubevirt import CloudInitTexts, kubevirt_manifests, unmappable
    from vmrun.guest.cloudinit import seed_texts
    from vmrun.spec.load import spec_files

    specs: dict[str, tuple[str, Spec, CloudInitTexts]] = {}
    refused: list[VmrunError] = []
    checked = spec_checker(args)
    for path in spec_files([args.spec]):
        try:
            spec = checked(str(path))
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
