"""The command line's grammar: global options, each command's arguments and handler; and what is
generated from the grammar (completion scripts, the manual page).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from vmrun import __version__
from vmrun.cli.arguments import JSON_HELP, exec_options, non_negative_int, positive_float, positive_int, ssh_options
from vmrun.cli.common import Handler
from vmrun.host.dirs import default_image_cache, default_run_root, default_state_root


def _in(module: str, function: str) -> Handler:
    """A command's handler, imported when the command runs: a run loads its own command family only."""

    def handler(args: argparse.Namespace) -> int:
        run: Handler = getattr(importlib.import_module(f"vmrun.cli.{module}"), function)
        return run(args)

    return handler


def _global_options(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--cache-dir", default=os.environ.get("VMRUN_CACHE_DIR") or str(default_image_cache()), metavar="DIR",
        help="downloaded base images, by digest (default: %(default)s); env VMRUN_CACHE_DIR",
    )


# The global options that take a value: the command line's command is the first word after them.
_VALUE_OPTIONS = ("--host-root", "--run-dir", "--state-dir", "--cache-dir")


def _validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", metavar="SPEC|DIR", help="a directory means its *.toml specs")
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    parser.set_defaults(handler=_in("spec_commands", "cmd_validate"))


def _render(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("--json", action="store_true", help="a JSON array, argv[0] the qemu binary")
    parser.set_defaults(handler=_in("spec_commands", "cmd_render"))


def _init(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("-o", "--output", metavar="FILE", help="default: NAME.toml")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.add_argument("--base", metavar="IMAGE",
                        help="boot this cloud image (a path or an https/http/file URL) through an overlay; also "
                        "writes NAME-user-data.yaml")
    parser.add_argument("--digest", metavar="DIGEST", help="with a URL --base: the image's sha256: or sha512: digest")
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    parser.set_defaults(handler=_in("spec_commands", "cmd_init"))


_FATES_JSON = "print what became of each VM as a JSON array on stdout"


def _up(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Per VM: validate, preflight, launch, wait for the agent, ethtool step, post_boot hooks. "
        "A VM already running with the same configuration is left alone; one running with another is refused "
        "unless --restart. A directory means its *.toml specs; VMs start in parallel."
    )
    parser.add_argument("specs", nargs="+", metavar="SPEC|DIR")
    parser.add_argument("--fresh", action="store_true", help="start UEFI guests with fresh firmware variables")
    parser.add_argument("--restart", action="store_true",
                        help="restart a VM that runs with another configuration (graceful down, then up)")
    parser.add_argument("--timeout", type=positive_float, default=30.0, metavar="S",
                        help="seconds a restarted guest gets to power down (default: 30)")
    parser.add_argument("--jobs", type=positive_int, metavar="N", help="start at most N VMs at once (default: all)")
    parser.add_argument("--json", action="store_true", help=_FATES_JSON)
    parser.set_defaults(handler=_in("vm_commands", "cmd_up"))


def _diff(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", metavar="SPEC|DIR")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_in("vm_commands", "cmd_diff"))


def _down(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vms", nargs="*", metavar="NAME|SPEC|DIR")
    parser.add_argument("--all", action="store_true", help="every VM under the run directory")
    parser.add_argument("--timeout", type=positive_float, default=30.0, metavar="S",
                        help="seconds the guest gets to power down (default: 30)")
    parser.add_argument("--force", action="store_true", help="skip the powerdown: quit, then kill")
    parser.add_argument("--dry-run", action="store_true",
                        help="stop nothing: say which VMs down would stop (their names read as down reads them)")
    parser.add_argument("--json", action="store_true", help=_FATES_JSON)
    parser.set_defaults(handler=_in("vm_commands", "cmd_down"))


def _status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vms", nargs="*", metavar="NAME|SPEC")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-a", "--addresses", action="store_true",
                        help="also ask each running VM's guest agent for its addresses (in parallel, 1 s each)")
    parser.add_argument("--names", action="store_true",
                        help="only the names of the VMs under the run directory, one a line; asks no VM")
    parser.set_defaults(handler=_in("vm_commands", "cmd_status"))


def _snapshot(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Snapshots kept inside the VM's qcow2 disks: the RAM, devices and every writable disk at one instant "
        "(every writable disk must be a kept qcow2 image, and no VFIO device). A stopped VM is named by its spec: "
        "list and rm read and change its disk files; save and restore need it running."
    )
    actions = parser.add_subparsers(dest="snapshot_command", required=True, metavar="WHAT")
    for action, summary, handler in (
        ("save", "save the running VM as TAG", _in("life_commands", "cmd_snapshot_save")),
        ("restore", "take the running VM back to TAG: RAM and disks", _in("life_commands", "cmd_snapshot_restore")),
        ("rm", "delete TAG from the VM's disks", _in("life_commands", "cmd_snapshot_rm")),
    ):
        command = actions.add_parser(action, help=summary)
        command.add_argument("vm", metavar="NAME|SPEC")
        command.add_argument("tag", metavar="TAG")
        command.add_argument("--timeout", type=positive_float, default=300.0, metavar="S",
                             help="seconds qemu gets to finish (default: 300)")
        command.set_defaults(handler=handler)
    listing = actions.add_parser("list", help="tag, date, size of the saved RAM, guest clock, disks")
    listing.add_argument("vm", metavar="NAME|SPEC")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_in("life_commands", "cmd_snapshot_list"))


def _exec(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    exec_options(parser)
    parser.set_defaults(handler=_in("guest_commands", "cmd_exec"))


def _ssh(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "ssh to the guest: through a user-mode NIC's forward of port 22, else to the first address the guest agent "
        "reports. Host keys are kept in the VM's state directory."
    )
    parser.add_argument("name", metavar="NAME")
    ssh_options(parser)
    parser.set_defaults(handler=_in("guest_commands", "cmd_ssh"))


def _ssh_config(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print an ssh_config Host block (vmrun-NAME) that reaches the running guest as `vmrun ssh NAME` does: "
        "vmrun ssh-config web >> ~/.ssh/config, then ssh vmrun-web (or scp, rsync, an editor's remote mode)."
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("-l", "--user", help="default: the user the spec's cloud-init user-data creates, else yours")
    parser.add_argument("-i", "--identity", metavar="FILE", help="the private key (default: ssh's own choice)")
    parser.set_defaults(handler=_in("guest_commands", "cmd_ssh_config"))


def _cp(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Copy one file, or a directory with -r, into a running guest or out of it, over the guest agent. "
        "NAME:PATH is in the guest (absolute); a host path with ':' goes as ./a:b. The copy appears whole (a "
        "temporary file or directory, renamed) with the source's permission bits; into a directory, it keeps its "
        "name."
    )
    parser.add_argument("source", metavar="SRC|NAME:SRC")
    parser.add_argument("destination", metavar="NAME:DST|DST")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="copy a directory as a new tree (DST/NAME if DST is a directory, else DST); links "
                             "inside are copied as links, FIFOs and devices skipped")
    parser.add_argument("--agent-timeout", type=positive_float, default=10.0, metavar="S", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    parser.set_defaults(handler=_in("guest_commands", "cmd_cp"))


def _logs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing, across restarts (each run's log from its start), until Ctrl-C")
    parser.add_argument("-n", "--tail", type=non_negative_int, metavar="N", help="only the last N lines")
    parser.set_defaults(handler=_in("guest_commands", "cmd_logs"))


def _console(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.set_defaults(handler=_in("guest_commands", "cmd_console"))


def _migrate(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Move a running VM to another host without a reboot, over a remote shell as rsync does. Without "
        "--copy-storage its disks must be on storage both hosts see at the same paths."
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--to", metavar="[USER@]HOST", help="the destination, reached with the remote shell")
    parser.add_argument("-e", "--rsh", default="ssh", metavar="RSH", help="the remote shell command (default: ssh)")
    parser.add_argument("--remote-vmrun", default="vmrun", metavar="CMD",
                        help="the command line that runs vmrun on the destination (default: vmrun)")
    parser.add_argument("--copy-storage", action="store_true",
                        help="copy the writable disks to files the destination creates at the same paths (over NBD; "
                        "an overlay's top only, the destination getting its base itself)")
    parser.add_argument("--timeout", type=positive_float, default=600.0, metavar="S",
                        help="cancel a migration not done after S seconds; the VM runs on here (default: 600)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: name, state, to, downtime_ms, "
                        "total_ms, bytes, disk_bytes")
    parser.add_argument("--abort", action="store_true",
                        help="clean what a half-done migration left here (a destination that never got the guest, "
                        "a source it left); the side that runs the guest is refused")
    parser.add_argument("--incoming", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(handler=_in("migrate_commands", "cmd_migrate"))


def _preflight(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--json", action="store_true", help="the plan as JSON: checks and changes")
    parser.set_defaults(handler=_in("host_commands", "cmd_preflight"))


def _host(parser: argparse.ArgumentParser) -> None:
    host_commands = parser.add_subparsers(dest="host_command", required=True, metavar="WHAT")
    iommu_cmd = host_commands.add_parser("iommu", help="IOMMU groups, their devices and drivers, viability")
    iommu_cmd.add_argument("--json", action="store_true")
    iommu_cmd.set_defaults(handler=_in("host_commands", "cmd_host_iommu"))
    check_cmd = host_commands.add_parser("check", help="KVM (and why not), vhost-net, tun, IOMMU, KSM, qemu")
    check_cmd.add_argument("--json", action="store_true")
    check_cmd.set_defaults(handler=_in("host_commands", "cmd_host_check"))


def _image(parser: argparse.ArgumentParser) -> None:
    image_commands = parser.add_subparsers(dest="image_command", required=True, metavar="WHAT")
    pull = image_commands.add_parser("pull", help="download a spec's URL bases (or one URL) into the cache")
    pull.add_argument("source", metavar="SPEC|URL")
    pull.add_argument("--digest", metavar="DIGEST", help="with a URL: sha256:<hex> or sha512:<hex>")
    pull.add_argument("--json", action="store_true", help=JSON_HELP)
    pull.set_defaults(handler=_in("host_commands", "cmd_image_pull"))
    listing = image_commands.add_parser("list", help="cached images: digest, size, which VMs use them, URL")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_in("host_commands", "cmd_image_list"))
    remove = image_commands.add_parser("rm", help="remove cached images no VM with a run directory uses")
    remove.add_argument("digests", nargs="*", metavar="DIGEST")
    remove.add_argument("--unused", action="store_true", help="every image no VM uses")
    remove.add_argument("--json", action="store_true", help=JSON_HELP)
    remove.set_defaults(handler=_in("host_commands", "cmd_image_rm"))
    prune = image_commands.add_parser(
        "prune", help="remove cached images that no spec given (SPEC, or DIR's *.toml) names and no VM with a run "
        "directory uses, and the partial files of downloads that did not finish")
    prune.add_argument("dirs", nargs="*", metavar="SPEC|DIR", help="specs whose base images stay; an invalid spec "
                       "is reported and its images kept; one that cannot be read removes nothing")
    prune.add_argument("--json", action="store_true", help=JSON_HELP)
    prune.set_defaults(handler=_in("host_commands", "cmd_image_prune"))


def _export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC|DIR", help="a directory (its *.toml) only with --format kubevirt")
    parser.add_argument("--format", choices=("libvirt", "systemd", "kubevirt"), required=True)
    parser.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
    parser.add_argument("--define", action="store_true", help="libvirt: also `virsh define` the domain")
    parser.set_defaults(handler=_in("spec_commands", "cmd_export"))


def _completion(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print a completion script for commands, options, spec files and VM names (from `vmrun status --names`). "
        "bash: source it, or save it as /usr/share/bash-completion/completions/vmrun; zsh: save it as _vmrun "
        "on $fpath; fish: save it as ~/.config/fish/completions/vmrun.fish."
    )
    parser.add_argument("shell", choices=("bash", "zsh", "fish"))
    parser.set_defaults(handler=cmd_completion)


def _man(parser: argparse.ArgumentParser) -> None:
    parser.description = "Print the manual page, generated from the parser: vmrun man | man -l -"
    parser.set_defaults(handler=cmd_man)


# Each command: its one-line help and what adds its arguments, in the order `vmrun --help` lists them.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "validate": ("check specs without touching the host", _validate),
    "render": ("print the exact qemu command line", _render),
    "init": ("write a commented starter spec", _init),
    "up": ("bring VMs to their specs: start what is not running, leave what matches alone", _up),
    "diff": ("how running VMs differ from their specs (exit 6 on drift)", _diff),
    "down": ("stop VMs and undo their host changes", _down),
    "status": ("running / dead / prepared, pid, accel, run dir, forwards, from vmrun's own state", _status),
    "snapshot": ("save the running VM at one instant, go back to it, list and remove snapshots", _snapshot),
    "exec": ("run a command in the guest over the agent", _exec),
    "ssh": ("ssh to the guest (a user-mode forward of port 22, or an address the agent reports)", _ssh),
    "ssh-config": ("print an ssh_config Host block for the guest, as `vmrun ssh` reaches it", _ssh_config),
    "cp": ("copy a file into or out of a running guest over the agent", _cp),
    "logs": ("print the serial console log", _logs),
    "console": ("attach to the serial console", _console),
    "migrate": ("move a running VM to another host, live", _migrate),
    "preflight": ("check the host and apply the host changes the spec needs", _preflight),
    "host": ("what this host offers: IOMMU groups, KVM, vhost-net, KSM", _host),
    "export": ("the same VM as a libvirt domain XML, a systemd unit or KubeVirt manifests", _export),
    "image": ("the cache of base images downloaded by URL: pull, list, rm, prune", _image),
    "completion": ("print a bash, zsh or fish completion script", _completion),
    "man": ("print the manual page (roff)", _man),
}


def command_in(argv: Sequence[str]) -> str | None:
    """The command the arguments name, when they plainly name one: global options (with their values)
    first, then a command. None when unsure (help, an abbreviated option, an unknown word)."""
    arguments = iter(argv)
    for argument in arguments:
        if argument in _VALUE_OPTIONS:
            next(arguments, None)
        elif argument != "--debug" and not argument.startswith(tuple(f"{option}=" for option in _VALUE_OPTIONS)):
            return argument if argument in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with only `command`'s sub-parser: each costs ~0.3 ms to build, and a run
    parses one command line. A command line that names `command` parses the same either way."""
    parser = argparse.ArgumentParser(
        prog="vmrun",
        description="Declarative QEMU/KVM VMs: a TOML spec in, a checked host and a running VM out.",
        epilog="Exit codes: 0 ok, 2 invalid spec or usage, 3 host refused, 4 qemu failed, "
        "5 guest agent or hook failed, 6 drift (vmrun diff), 141 stdout closed early, 1 a bug in vmrun.",
    )
    _global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add_arguments) in COMMANDS.items():
        if command in (None, name):
            add_arguments(commands.add_parser(name, help=summary))
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    from vmrun.cli.completion import completion_script

    sys.stdout.write(completion_script(args.shell, build_parser()))
    return 0


def cmd_man(args: argparse.Namespace) -> int:
    from vmrun.cli.completion import man_page

    sys.stdout.write(man_page(build_parser()))
    return 0
