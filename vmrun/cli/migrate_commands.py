"""`vmrun migrate`: the source side, and the hidden destination side that the source starts over the remote
shell (`vmrun migrate NAME --incoming`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from vmrun.cli.common import host_of, places_of, say, vm_name
from vmrun.errors import UsageError


def cmd_migrate(args: argparse.Namespace) -> int:
    name = vm_name(args.name)
    if args.incoming:
        return _incoming(args, name)
    if args.abort:
        if args.to is not None or args.copy_storage:
            raise UsageError("--abort cleans this host: it takes no --to or --copy-storage")
        from vmrun.run.migrate import abort

        say(f"{name}: cleaned {abort(name, host_of(args), places_of(args), say=say)}")
        return 0
    if args.to is None:
        raise UsageError("say where to: vmrun migrate NAME --to [USER@]HOST")
    from vmrun.run.migrate import Remote, migrate

    remote = Remote.parse(args.to, args.rsh, args.remote_vmrun)
    moved = migrate(name, remote, host_of(args), places_of(args), timeout=args.timeout,
                    copy_storage=args.copy_storage, say=say)
    if args.json:
        print(json.dumps(moved.to_json()))
    else:
        disks = "" if moved.disk_bytes is None else f", {_mib(moved.disk_bytes)} of it disk"
        say(f"{name} migrated to {remote.host} in {_ms(moved.total_ms)} (downtime {_ms(moved.downtime_ms)}, "
            f"{_mib(moved.bytes)} sent{disks})")
    return 0


def _incoming(args: argparse.Namespace, name: str) -> int:
    from vmrun.run.migrate import migrate_in

    # The address the source reached this host on (sshd says so): qemu listens there, and nowhere else.
    connection = os.environ.get("SSH_CONNECTION", "").split()
    address = connection[2] if len(connection) == 4 else None
    migrate_in(name, host_of(args), places_of(args), sys.stdin, sys.stdout, address=address, say=say)
    return 0


def _ms(value: int | None) -> str:
    return "? ms" if value is None else f"{value} ms"


def _mib(value: int | None) -> str:
    return "? MiB" if value is None else f"{value / 2**20:.1f} MiB"
