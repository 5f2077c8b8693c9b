"""What `qemu.extra_args` may not do: undo what vmrun guarantees behind its back.

extra_args stay an escape hatch, appended verbatim after vmrun's own arguments. Refused are the options
that would undo the privilege drop or the sandbox, take a host device or network interface that preflight
neither checks nor gives back, or take vmrun's own monitor, pidfile and process name (qemu keeps the last
of a repeated option, and a second socket on a path replaces the first). Each option is read as qemu reads
it (`--opt` is `-opt`; a driver or backend type given first, as `driver=`/`type=`, or in JSON), and also
as `-opt=value`, which qemu itself refuses. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

_SECOND_MONITOR = "would open a second monitor, which controls qemu as vmrun's does"
_USE_HOST_USER = "host.user sets who qemu runs as"
_USE_VMRUN = "vmrun status, exec and console reach the VM through vmrun's own sockets"
# Option -> why it is refused, and what to do instead.
_REFUSED_OPTIONS: dict[str, tuple[str, str | None]] = {
    **dict.fromkeys(("runas", "run-with", "chroot"), ("would undo vmrun's privilege drop", _USE_HOST_USER)),
    "sandbox": ("would replace the seccomp sandbox vmrun gives qemu", None),
    **dict.fromkeys(("qmp", "qmp-pretty", "monitor", "mon"), (_SECOND_MONITOR, _USE_VMRUN)),
    "daemonize": ("is vmrun's: it starts qemu daemonized itself", None),
    "pidfile": ("is vmrun's: it finds its qemu by the pidfile in the run directory", None),
    "name": ("is vmrun's: it tells its qemu by the name it gives it", "the spec's name is the guest's name"),
    "readconfig": ("would add devices and backends vmrun cannot see", "write them in extra_args"),
    "set": ("would change options vmrun gave, out of its sight", None),
}
# Options whose value names a device driver, and options whose value names a network backend type.
_DEVICE_OPTIONS = ("device",)
_NETWORK_OPTIONS = ("netdev", "net", "nic")
# Host devices a guest would take without preflight checking, binding or giving them back.
_HOST_DEVICE_DRIVERS = ("vfio", "usb-host", "u2f-passthru", "virtio-input-host")
# Network backends on a host interface or device: preflight creates, attaches and deletes those.
_HOST_NETWORK_TYPES = frozenset({"tap", "bridge", "vhost-vdpa", "af-xdp"})
_MONITOR_PREFIX = "mon:"  # a character device multiplexed with a monitor (-serial mon:stdio)
_HINT_DEVICE = "declare it in the spec ([[vfio]] for PCI passthrough), where preflight checks it and down gives it back"
_HINT_NETWORK = "declare the NIC in [[nics]] (tap and bridge), where preflight creates and undoes it"


def option_name(arg: str) -> str | None:
    """The option an argument names as qemu reads it (`--opt` as `-opt`, `-opt=value` as `-opt`);
    None when it is no option (qemu reads such an argument as a disk image)."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    return arg.removeprefix("--" if arg.startswith("--") else "-").split("=", 1)[0]


def split_opts(value: str) -> list[str]:
    """qemu's option value split at single commas, a doubled comma standing for one."""
    parts, current, index = [], [], 0
    while index < len(value):
        if value[index] == ",":
            if value[index + 1 : index + 2] == ",":
                current.append(",")
                index += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(value[index])
        index += 1
    return [*parts, "".join(current)]


def _json_object(value: str) -> dict[str, object] | None:
    if not value.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None  # qemu refuses it too
    return parsed if isinstance(parsed, dict) else None


def implied_values(value: str, key: str) -> list[str]:
    """Every value `key` takes in an option value: given first without a name (`vfio-pci,host=...`), as
    `key=...` (qemu keeps the last, so each counts), or in JSON (`{"driver": "vfio-pci"}`)."""
    parsed = _json_object(value)
    if parsed is not None:
        found = parsed.get(key)
        return [found] if isinstance(found, str) else []
    parts = split_opts(value)
    values = [parts[0]] if parts and "=" not in parts[0] else []
    return values + [part.split("=", 1)[1] for part in parts if part.startswith(f"{key}=")]


def _is_host_device(driver: str) -> bool:
    return driver.startswith(_HOST_DEVICE_DRIVERS)


def _value_refusal(option: str, value: str) -> tuple[str, str | None] | None:
    """Why `-option value` is refused for its value, and what to do instead; None when it is allowed."""
    if option in _DEVICE_OPTIONS:
        driver = next((d for d in implied_values(value, "driver") if _is_host_device(d)), None)
        if driver is not None:
            return f"-{option} {driver} passes a host device through behind preflight's back", _HINT_DEVICE
    if option in _NETWORK_OPTIONS:
        backend = next((t for t in implied_values(value, "type") if t in _HOST_NETWORK_TYPES), None)
        if backend is not None:
            return f"-{option} {backend} uses a host network interface behind preflight's back", _HINT_NETWORK
    if value.startswith(_MONITOR_PREFIX):
        return f"-{option} {_MONITOR_PREFIX}... {_SECOND_MONITOR}", _USE_VMRUN
    return None


def refused_extra_args(args: Sequence[str]) -> Iterator[tuple[int, str, str | None]]:
    """(index, why, hint) for each refused element of extra_args: the option itself, or the value that
    makes it refused (its own element, or the option's when written `-opt=value`).

    Every element that looks like an option is judged as one, and the element after it as its value, even
    where qemu would read them otherwise (`-append -runas`): refusing too much is safe, missing one is not.
    """
    for index, arg in enumerate(args):
        option = option_name(arg)
        if option is None:
            continue
        if option in _REFUSED_OPTIONS:
            why, hint = _REFUSED_OPTIONS[option]
            yield index, f"-{option} {why}", hint
            continue
        inline = [(index, arg.split("=", 1)[1])] if "=" in arg else []
        following = [(index + 1, args[index + 1])] if index + 1 < len(args) else []
        for where, value in inline + following:
            refusal = _value_refusal(option, value)
            if refusal is not None:
                yield where, *refusal
                break


def named_paths(arg: str) -> Iterator[str]:
    """Every string in an argument that qemu may open as a file or a socket: each part of an option value,
    after its `key=` and after a `backend:` prefix (`unix:/path`), and every string in JSON; those with a
    slash only (a bare name is relative to wherever vmrun runs)."""
    parsed = _json_object(arg)
    strings = list(_json_strings(parsed)) if parsed is not None else split_opts(arg)
    for text in strings:
        value = text.split("=", 1)[-1]
        for candidate in dict.fromkeys((value, value.split(":", 1)[-1])):
            if "/" in candidate:
                yield candidate


def _json_strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_strings(item)
