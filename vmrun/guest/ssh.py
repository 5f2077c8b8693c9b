"""`vmrun ssh`: the system ssh to a running guest, through a user-mode NIC's forward of port 22, else to the
first address the guest agent reports that the host can reach. Host keys are kept per VM, in its state
directory, so a guest's key never lands in the user's own known_hosts."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmrun.errors import UsageError
from vmrun.spec.model import Spec
from vmrun.spec.usernet import SSH_PORT, is_user, ssh_forward

if TYPE_CHECKING:
    from vmrun.guest.agent import GuestInterface

KNOWN_HOSTS = "known_hosts"
_NO_ROUTE_HINT = 'forward it from a user-mode NIC: mode = "user", forward = ["tcp:2222:22"]'


def ssh_target(spec: Spec, interfaces: Callable[[], Sequence[GuestInterface]]) -> tuple[str, int]:
    """(address, port) of the guest's sshd as the host reaches it. ``interfaces`` asks the agent, and only
    when no forward says it; a user-mode NIC's own address is inside qemu, out of the host's reach."""
    forwarded = ssh_forward(spec)
    if forwarded is not None:
        return forwarded
    if not spec.agent.enabled:
        raise UsageError(f"{spec.name}: no user-mode NIC forwards port 22, and without the agent vmrun knows no "
                         "guest address", hint=_NO_ROUTE_HINT)
    inside_qemu = {nic.guest_mac for nic in spec.nics if is_user(nic)}
    for interface in interfaces():
        for address in interface.addresses if interface.mac not in inside_qemu else ():
            ip = ipaddress.ip_interface(address).ip
            if not (ip.is_loopback or ip.is_link_local):
                return str(ip), SSH_PORT
    raise UsageError(f"{spec.name}: no route to the guest's port 22: no user-mode NIC forwards it and the agent "
                     "reports no address the host can reach", hint=_NO_ROUTE_HINT)


def guest_user(spec: Spec, invoking_user: str) -> str:
    """The user the spec's cloud-init user-data creates, else the one running vmrun (sudo's caller)."""
    user_data = spec.cloud_init.user_data if spec.cloud_init is not None else None
    return (user_data_user(user_data) if user_data is not None else None) or invoking_user


def user_data_user(path: Path) -> str | None:
    """cloud-config's `user`, else system_info.default_user, else the first user `users` names."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    system_info = data.get("system_info")
    users = data.get("users")
    if isinstance(users, str):  # cloud-init also takes "default, alice"
        users = [user.strip() for user in users.split(",")]
    candidates = [data.get("user"), system_info.get("default_user") if isinstance(system_info, dict) else None,
                  *(users if isinstance(users, list) else [])]
    return next((name for name in map(_user_name, candidates) if name), None)


def _user_name(entry: Any) -> str | None:
    name = entry.get("name") if isinstance(entry, dict) else entry
    return name if isinstance(name, str) and name and name != "default" else None


def ssh_argv(*, address: str, port: int, user: str, known_hosts: Path, identities: Iterable[Path],
             command: Sequence[str], options: Sequence[str] = ()) -> list[str]:
    """ssh's argv; after "--" ssh reads no option, so a command such as `ls -l` stays the command. The caller's
    options come first: ssh keeps the first value it reads of each, so they override vmrun's."""
    return [
        "ssh", *(word for option in options for word in ("-o", option)), "-p", str(port), "-l", user,
        *(word for key, value in _options(known_hosts, identities) for word in ("-o", f"{key}={value}")),
        "--", address, *command,
    ]


def ssh_config(*, host: str, address: str, port: int, user: str, known_hosts: Path,
               identities: Iterable[Path]) -> str:
    """The same as an ssh_config Host block: `ssh -F FILE HOST`, or Include it from ~/.ssh/config."""
    if any(char.isspace() or char in "#\"" for char in host):
        raise UsageError(f"{host!r} cannot be an ssh_config Host name")
    lines = [f"Host {host}", f"  HostName {address}", f"  Port {port}", f"  User {_ssh_config_word(user)}",
             *(f"  {key} {value}" for key, value in _options(known_hosts, identities))]
    return "\n".join(lines) + "\n"


def _ssh_config_word(word: str) -> str:
    if not word or any(char.isspace() or char in "\"\\%#$" for char in word):
        raise UsageError(f"{word!r} cannot be written in an ssh_config", hint="-l names another user")
    return word


def _options(known_hosts: Path, identities: Iterable[Path]) -> list[tuple[str, str]]:
    return [
        ("UserKnownHostsFile", _ssh_config_path(known_hosts)), ("StrictHostKeyChecking", "accept-new"),
        # IdentityFile, not -i: ssh checks a -i path as written but opens it %-expanded, so a path with % fails.
        *(("IdentityFile", _ssh_config_path(identity)) for identity in identities),
    ]


def _ssh_config_path(path: Path) -> str:
    """path as one ssh_config argument: ssh splits a value at white space (several files, new keys written to
    the first) and expands %-tokens, so it is quoted (\\ and \" escaped) and each % doubled. It also expands
    ${VARIABLE}, which nothing escapes: such a path is refused rather than sent somewhere else."""
    if "${" in str(path):
        raise UsageError(f"ssh would read {str(path)!r} with the ${{...}} in it replaced by a variable",
                         hint="use a path without ${")
    quoted = str(path).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{quoted}"'

