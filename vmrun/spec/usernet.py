"""User-mode NICs: qemu's own network stack (slirp). No tap, no root, no host change; the host reaches the
guest through port forwards, and ``restrict`` keeps the guest from reaching anything outside.

A forward is written ``PROTO:[ADDRESS:]HOSTPORT:GUESTPORT`` ("tcp:2222:22", "tcp:0.0.0.0:2222:22"); the
host side listens on 127.0.0.1 unless an address is given. qemu 7.2 forwards from IPv4 addresses only.
HOSTPORT ``auto`` is a free port `up` picks, so that VMs from one spec template never clash; the VM's state
records the port picked (the spec it started from, and ``forwards``).
"""

from __future__ import annotations

import errno
import ipaddress
import re
from collections.abc import Callable, Iterator

import attrs

from vmrun.errors import LaunchError, Problem
from vmrun.record import Record
from vmrun.spec.model import Nic, NicMode, Spec, Vhost

LOOPBACK = "127.0.0.1"
ANY_ADDRESS = "0.0.0.0"
PROTOCOLS = ("tcp", "udp")
SSH_PORT = 22
UNPRIVILEGED_PORTS = 1024  # the lowest port any user may listen on (Linux's ip_unprivileged_port_start default)
FORWARD_FORMAT = ('PROTO:[ADDRESS:]HOSTPORT:GUESTPORT, e.g. "tcp:2222:22", "tcp:0.0.0.0:2222:22" or "tcp:auto:22" '
                  '(a free host port, picked at up)')
AUTO = "auto"
AUTO_PORT = 0  # a Forward's host_port until `up` picks one
_PORT = re.compile(r"[0-9]{1,5}")
# qemu's words when it cannot listen on a forward's host port (net/slirp.c), quoting the hostfwd rule.
_FORWARD_REFUSED = re.compile(r"Could not set up host forwarding rule '([^']*)'")


@attrs.frozen(repr=False)
class Forward(Record):
    protocol: str
    address: str
    host_port: int
    guest_port: int

    @property
    def hostfwd(self) -> str:
        """qemu's form, the guest address left to slirp (the address its DHCP hands out)."""
        return f"{self.protocol}:{self.address}:{self.host_port}-:{self.guest_port}"

    @property
    def is_auto(self) -> bool:
        return self.host_port == AUTO_PORT

    def clashes_with(self, other: Forward) -> bool:
        """Both would listen on one host port: a wildcard address takes the port on every address."""
        if AUTO_PORT in (self.host_port, other.host_port):
            return False  # `up` picks a free one
        same_port = (self.protocol, self.host_port) == (other.protocol, other.host_port)
        return same_port and (ANY_ADDRESS in (self.address, other.address) or self.address == other.address)

    def with_host_port(self, port: int) -> Forward:
        return attrs.evolve(self, host_port=port)

    @property
    def text(self) -> str:
        """As a spec writes it, the address always given."""
        return f"{self.protocol}:{self.address}:{AUTO if self.is_auto else self.host_port}:{self.guest_port}"

    def __str__(self) -> str:
        return f"{self.protocol} {self.address}:{AUTO if self.is_auto else self.host_port} -> guest port " \
               f"{self.guest_port}"


def parse_forward(text: str) -> Forward:
    """The forward ``text`` says; ValueError with the reason a user can act on."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"{text!r} is not a port forward")
    protocol, *address, host_port, guest_port = parts
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not tcp or udp")
    host_address = address[0] if address else LOOPBACK
    try:
        ipaddress.IPv4Address(host_address)
    except ValueError:
        raise ValueError(f"{host_address!r} is not an IPv4 address (qemu forwards from IPv4 only)") from None
    port = AUTO_PORT if host_port == AUTO else _port(host_port, "host")
    return Forward(protocol, host_address, port, _port(guest_port, "guest"))


def _port(text: str, side: str) -> int:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{side} port {text!r} is not a number from 1 to 65535")
    return int(text)


def is_user(nic: Nic) -> bool:
    return nic.mode is NicMode.USER


def tap_nics(spec: Spec) -> list[Nic]:
    """The NICs with a host tap: every one but the user-mode ones."""
    return [nic for nic in spec.nics if not is_user(nic)]


def forwards(nic: Nic) -> list[Forward]:
    """A checked NIC's forwards (check_user_nics has refused any that do not parse)."""
    return [parse_forward(text) for text in nic.forward]


def check_user_nics(spec: Spec) -> Iterator[Problem]:
    """What only applies to one mode, and forwards that parse and take no host port twice in the VM."""
    taken: list[tuple[Forward, str]] = []
    for index, nic in enumerate(spec.nics):
        path = f"nics[{index}]"
        if not is_user(nic):
            for key in ("forward", "restrict"):
                if getattr(nic, key):
                    yield Problem(f"{path}.{key}", 'only applies to mode = "user"')
            continue
        for key in ("tap", "bridge"):
            if getattr(nic, key) is not None:
                yield Problem(f"{path}.{key}", "a user-mode NIC has no tap", 'remove it, or set mode = "tap"')
        if nic.vhost is not Vhost.AUTO:
            yield Problem(f"{path}.vhost", "vhost-net does not apply to a user-mode NIC", "remove it")
        if nic.queues > 1:
            yield Problem(f"{path}.queues", "multiqueue does not apply to a user-mode NIC (qemu's user network "
                                            "moves packets on one queue)", "remove it, or use a tap NIC")
        for number, text in enumerate(nic.forward):
            here = f"{path}.forward[{number}]"
            try:
                forward = parse_forward(text)
            except ValueError as exc:
                yield Problem(here, str(exc), FORWARD_FORMAT)
                continue
            clash = next((where for other, where in taken if forward.clashes_with(other)), None)
            if clash is not None:
                yield Problem(here, f"host port {forward.address}:{forward.host_port} ({forward.protocol}) is "
                                    f"already forwarded by {clash}", "forward another host port")
            taken.append((forward, here))


def refused_forward(spec: Spec, qemu_message: str, bind_error: Callable[[Forward], int | None]) -> LaunchError | None:
    """qemu could not listen on a forward's host port: an error that names the forward and why, not qemu's long
    line; None for any other failure. qemu does not say why, so bind_error asks the host again."""
    refused = _FORWARD_REFUSED.search(qemu_message)
    if refused is None:
        return None
    for (index, nic), (number, forward) in _user_forwards(spec):
        if forward.hostfwd == refused.group(1):
            reason, hint = _why_refused(forward, bind_error(forward))
            return LaunchError(
                f"nics[{index}].forward[{number}] ({nic.forward[number]}): qemu could not listen on host port "
                f"{forward.address}:{forward.host_port} ({forward.protocol}): {reason}", hint=hint)
    return None


def _why_refused(forward: Forward, error: int | None) -> tuple[str, str]:
    if error == errno.EACCES:
        return (f"only root may listen on a port below {UNPRIVILEGED_PORTS}",
                f"forward a host port from {UNPRIVILEGED_PORTS} up, or run vmrun as root")
    if error == errno.EADDRNOTAVAIL:
        return (f"{forward.address} is no address of this host",
                f"forward from {LOOPBACK}, {ANY_ADDRESS} (every address) or one `ip -4 addr` lists")
    return ("something else holds it",
            f"free the port (ss -lnp 'sport = :{forward.host_port}' shows who holds it), or forward another one")


def privileged_forwards(spec: Spec) -> Iterator[Problem]:
    """Forwards from ports below 1024, which only root may listen on: a warning for a user who is not."""
    for (index, _), (number, forward) in _user_forwards(spec):
        if not forward.is_auto and forward.host_port < UNPRIVILEGED_PORTS:
            yield Problem(f"nics[{index}].forward[{number}]",
                          f"host port {forward.host_port} is below {UNPRIVILEGED_PORTS}: only root may listen there",
                          f"run vmrun up as root, or forward a host port from {UNPRIVILEGED_PORTS} up")


def with_host_ports(spec: Spec, pick: Callable[[Nic, int, Forward], int]) -> Spec:
    """The spec with each ``auto`` host port replaced by pick(nic, forward index, forward): the spec a VM
    runs with, which its state records."""
    nics = []
    for nic in spec.nics:
        texts = list(nic.forward)
        for number, forward in enumerate(forwards(nic) if is_user(nic) else ()):
            if forward.is_auto:
                texts[number] = forward.with_host_port(pick(nic, number, forward)).text
        nics.append(attrs.evolve(nic, forward=tuple(texts)) if texts != list(nic.forward) else nic)
    return attrs.evolve(spec, nics=tuple(nics))


def auto_forwards(spec: Spec) -> list[tuple[str, Forward]]:
    """The forwards whose host port `up` picks, by their path in the spec."""
    return [(f"nics[{index}].forward[{number}]", forward) for (index, _), (number, forward) in _user_forwards(spec)
            if forward.is_auto]


def ssh_forward(spec: Spec) -> tuple[str, int] | None:
    """Where the host reaches the guest's sshd through a user-mode NIC: (address, port), or None."""
    for _, (_, forward) in _user_forwards(spec):
        if forward.protocol == "tcp" and forward.guest_port == SSH_PORT:
            return (LOOPBACK if forward.address == ANY_ADDRESS else forward.address), forward.host_port
    return None


def _user_forwards(spec: Spec) -> Iterator[tuple[tuple[int, Nic], tuple[int, Forward]]]:
    """((NIC index, NIC), (forward index, forward)) for every forward of a checked spec's user-mode NICs."""
    for index, nic in enumerate(spec.nics):
        if is_user(nic):
            for number, forward in enumerate(forwards(nic)):
                yield (index, nic), (number, forward)
