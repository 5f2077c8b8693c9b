"""Preflight's findings for NICs: the tap (made, or one that exists and fits), its bridge, vhost-net."""

from __future__ import annotations

from vmrun.host.facts import HostFacts
from vmrun.host.system import Host, User
from vmrun.preflight.changes import Change, Finding, Found, Step, fail_finding, ok_finding, warn_finding
from vmrun.preflight.others import Others
from vmrun.spec.model import Nic, Spec, Vhost
from vmrun.spec.usernet import forwards, is_user

IFF_UP = 0x1  # in /sys/class/net/IF/flags
IFF_MULTI_QUEUE = 0x100  # in /sys/class/net/TAP/tun_flags


def _tap_mode(nic: Nic) -> list[str]:
    return ["mode", "tap", *(["multi_queue"] if nic.queues > 1 else [])]


def _hex(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def inspect_nic(spec: Spec, nic: Nic, host: Host, facts: HostFacts, user: User | None, others: Others) -> Found:
    if is_user(nic):
        forwarded = "; ".join(map(str, forwards(nic))) or "no port forwards"
        yield ok_finding(f"nics {nic.id}", f"user-mode network in qemu, no host change ({forwarded})")
        return
    tap, name = nic.host_tap, f"nics {nic.id}"
    holder = others.taps.get(tap)
    if holder is not None:
        # Two guests on one tap would share its queues, and the first `down` would pull it from the other.
        yield fail_finding(name, f"tap {tap} is in use by VM {holder}: give this NIC another tap (nics.tap)")
        return
    exists = host.exists(f"/sys/class/net/{tap}")
    if exists:
        yield _existing_tap(tap, name, nic, host, spec, user)
    else:
        yield from _create_tap(tap, name, nic, spec, facts, user)
    if nic.bridge is not None:
        yield from _attach_to_bridge(tap, nic.bridge, name, host, facts, tap_exists=exists)
    yield from _inspect_vhost(name, nic, host, facts)


def _create_tap(tap: str, name: str, nic: Nic, spec: Spec, facts: HostFacts, user: User | None) -> Found:
    mode = _tap_mode(nic)
    owner = user.name if user else spec.host.user
    add = ["ip", "tuntap", "add", "dev", tap, *mode, "user", owner]
    if not facts.drop_privileges:
        yield fail_finding(name, f"tap {tap} does not exist and only root can create it: sudo {' '.join(add)}")
        return
    queues = f"multi_queue for {nic.queues} queue pairs, " if nic.queues > 1 else ""
    yield ok_finding(name, f"creating tap {tap} ({queues}owned by {owner}); down deletes it")
    path = f"/sys/class/net/{tap}"
    yield Change(Step.command(path, *add), (Step.command(path, "ip", "tuntap", "del", "dev", tap, *mode),))


def _existing_tap(tap: str, name: str, nic: Nic, host: Host, spec: Spec, user: User | None) -> Finding:
    flags = _hex(host.read(f"/sys/class/net/{tap}/tun_flags"))
    if flags is None:
        return fail_finding(name, f"{tap} exists but is not a tap device: name another tap in nics.tap")
    multiqueue = bool(flags & IFF_MULTI_QUEUE)
    owner = user.name if user else spec.host.user
    recreate = (f"ip tuntap del dev {tap} mode tap{' multi_queue' if multiqueue else ''}; "
                f"ip tuntap add dev {tap} {' '.join(_tap_mode(nic))} user {owner}")
    if nic.queues > 1 and not multiqueue:
        return fail_finding(name, f"tap {tap} has no multi_queue flag but queues = {nic.queues}; "
                                  f"recreate it: {recreate}")
    if nic.queues == 1 and multiqueue:
        return fail_finding(name, f"tap {tap} is multi_queue but queues = 1, which qemu refuses: set queues > 1, "
                                f"or recreate it: {recreate}")
    holders = host.tap_holders(tap)
    if holders:
        # Another qemu (of a VM under another run directory, or of another tool): a multi_queue tap would
        # take this VM's queues too, and the two guests would share one link.
        pid, command = holders[0]
        return fail_finding(name, f"tap {tap} is open in process {pid} ({command}), which another VM may be "
                                f"using: give this NIC another tap (nics.tap)")
    stranger = _tap_stranger(host, tap, user)
    if stranger is not None:
        return fail_finding(name, f"tap {tap} belongs to {stranger}, not to {owner}, who qemu runs as: "
                                f"use another tap, or recreate it: {recreate}")
    return ok_finding(name, f"using existing tap {tap}")


def _tap_stranger(host: Host, tap: str, user: User | None) -> str | None:
    """The tap's owner or group when they are not qemu's user (-1 in sysfs: anyone may open it)."""
    owner = int(host.read(f"/sys/class/net/{tap}/owner") or -1)
    group = int(host.read(f"/sys/class/net/{tap}/group") or -1)
    if owner != -1 and (user is None or owner != user.uid):
        return f"uid {owner}"
    if group != -1 and (user is None or group not in host.group_ids(user)):
        return f"gid {group}"
    return None


def _attach_to_bridge(tap: str, bridge: str, name: str, host: Host, facts: HostFacts, *, tap_exists: bool) -> Found:
    attach = ["ip", "link", "set", tap, "master", bridge, "up"]
    master = host.link_name(f"/sys/class/net/{tap}/master") if tap_exists else None
    if not host.exists(f"/sys/class/net/{bridge}"):
        yield fail_finding(name, f"bridge {bridge} does not exist (ip link add {bridge} type bridge)")
    elif not host.exists(f"/sys/class/net/{bridge}/bridge"):
        yield fail_finding(name, f"{bridge} is not a bridge (nics.bridge must name one)")
    elif master == bridge:
        yield ok_finding(name, f"tap {tap} is already attached to bridge {bridge}")
    elif master is not None:
        yield fail_finding(name, f"tap {tap} is attached to {master}, not to bridge {bridge}: "
                                 f"ip link set {tap} nomaster")
    elif not facts.drop_privileges:
        yield fail_finding(name, f"only root can attach tap {tap} to bridge {bridge}: sudo {' '.join(attach)}")
    else:
        was_up = bool((_hex(host.read(f"/sys/class/net/{tap}/flags")) or 0) & IFF_UP) if tap_exists else False
        detach = ["ip", "link", "set", tap, "nomaster", *([] if was_up else ["down"])]
        yield ok_finding(name, f"attaching tap {tap} to bridge {bridge}; down detaches it")
        path = f"/sys/class/net/{tap}/master"
        yield Change(Step.command(path, *attach), (Step.command(path, *detach),))


def _inspect_vhost(name: str, nic: Nic, host: Host, facts: HostFacts) -> Found:
    if nic.vhost is Vhost.OFF:
        return
    why_not = "is not readable and writable by this user" if host.exists("/dev/vhost-net") else \
        "is missing (modprobe vhost_net)"
    if facts.vhost_net:
        yield ok_finding(name, "vhost-net on")
    elif nic.vhost is Vhost.ON:
        yield fail_finding(name, f"vhost = true but /dev/vhost-net {why_not}")
    else:
        yield warn_finding(name, f"vhost off: /dev/vhost-net {why_not}, so qemu moves the packets itself (slower)")
