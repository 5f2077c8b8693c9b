"""The commands that take a VM back to an earlier instant: snapshot save, restore, rm, list."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from vmrun.cli.common import checked_spec, host_of, places_of, say, vm_name

if TYPE_CHECKING:
    from vmrun.run.snapshot import Target


def _target(args: argparse.Namespace) -> Target:
    from vmrun.run.snapshot import Target

    if args.vm.endswith(".toml") or "/" in args.vm:
        spec = checked_spec(args.vm, args)
        return Target(spec.name, spec, args.vm)
    return Target(vm_name(args.vm))


def _checked_tag(args: argparse.Namespace) -> None:
    """Before anything else: a hostile tag is refused before a spec is read or a lock file made."""
    from vmrun.run.snapshot import check_tag

    check_tag(args.tag)


def cmd_snapshot_save(args: argparse.Namespace) -> int:
    from vmrun.run.snapshot import save

    _checked_tag(args)
    save(_target(args), args.tag, host_of(args), places_of(args), timeout=args.timeout, say=say)
    return 0


def cmd_snapshot_restore(args: argparse.Namespace) -> int:
    from vmrun.run.snapshot import restore

    _checked_tag(args)
    restore(_target(args), args.tag, host_of(args), places_of(args), timeout=args.timeout, say=say)
    return 0


def cmd_snapshot_rm(args: argparse.Namespace) -> int:
    from vmrun.run.snapshot import remove

    _checked_tag(args)
    remove(_target(args), args.tag, host_of(args), places_of(args), timeout=args.timeout, say=say)
    return 0


def cmd_snapshot_list(args: argparse.Namespace) -> int:
    from vmrun.run.snapshot import listing, table

    snapshots = listing(_target(args), host_of(args), places_of(args))
    if args.json:
        print(json.dumps(snapshots.to_json(), indent=1))
    else:
        print("\n".join(table(snapshots)))
    return 0
