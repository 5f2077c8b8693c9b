"""What the host itself cannot give away: the reason taking a PCI function from its host driver would hurt
the host, from what the kernel shows of the function and of what hangs below it.

The function's own class (host bridge, ISA/LPC bridge), the boot VGA, disks with a mounted file system or
swap on them (LVM, dm-crypt and md included), virtio shares that are mounted (9p, virtiofs), the NIC of the
default route and a virtio console whose ports are open. Mounts are read as vmrun sees them and as the host's
init sees them (/proc/1/mountinfo), so that vmrun in a chroot or a container still sees the host's root disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from vmrun.host.mounts import Mount, parse_mountinfo, parse_mounts
from vmrun.host.pci import PCI_DEVICES
from vmrun.host.system import Host

HOST_CRITICAL_CLASSES = {
    "0x0600": "it is a host bridge",
    "0x0601": "it is an ISA/LPC bridge (the firmware flash, TPM, serial ports and keyboard sit behind it)",
}
VIRTIO_DEVICES = "/sys/bus/virtio/devices"
SHARE_DRIVERS = {"9pnet_virtio": "9p", "virtiofs": "virtiofs"}  # virtio driver -> the file system it carries
HVC = re.compile(r"hvc\d+")  # a hypervisor console's tty


def _is_under(path: str | None, directory: str) -> bool:
    # A virtio NIC's or disk's device link leads below the PCI function (…/0000:00:03.0/virtio2).
    return path is not None and (path == directory or path.startswith(directory + "/"))


def _rows(host: Host, proc_file: str) -> list[list[str]]:
    return [line.split() for line in (host.read(proc_file) or "").splitlines() if line.strip()]


def _mounts(host: Host) -> list[Mount]:
    """vmrun's own mount table, then the host's (its init's): a chroot or a container hides the latter."""
    return parse_mounts(host.read("/proc/mounts") or "") + parse_mountinfo(host.read("/proc/1/mountinfo") or "")


# --- disks ------------------------------------------------------------------------------------------


def _stacked_block_devices(host: Host, function: str) -> dict[str, str | None]:
    """The function's disks, their partitions and what is built on them (LVM, dm-crypt, md): each /dev path
    (a device-mapper one under its /dev/mapper name too) with its "major:minor" number."""
    devices: dict[str, str | None] = {}
    pending = [disk for disk in host.listdir("/sys/block") if _is_under(host.resolve(f"/sys/block/{disk}"), function)]
    while pending:
        name = pending.pop()
        if f"/dev/{name}" in devices:
            continue
        block = f"/sys/class/block/{name}"
        number = host.read(f"{block}/dev")
        devices[f"/dev/{name}"] = number
        mapper_name = host.read(f"{block}/dm/name")
        if mapper_name:
            devices[f"/dev/mapper/{mapper_name}"] = number
        pending += host.listdir(f"{block}/holders")
        pending += [child for child in host.listdir(block) if host.exists(f"{block}/{child}/partition")]
    return devices


def _busy_block_device(host: Host, function: str) -> str | None:
    devices = _stacked_block_devices(host, function)
    if not devices:
        return None
    # By number first: a mount table may name a device otherwise than /dev does (/dev/root). A /dev/mapper
    # name comes after its dm-N name, so it is the one told.
    named = {number: path for path, number in devices.items() if number}

    def held(source: str) -> str | None:
        if source in devices or (source.startswith("/dev/") and host.resolve(source) in devices):
            return source
        return None

    for mount in _mounts(host):
        device = (named.get(mount.device) if mount.device else None) or held(mount.source)
        if device:
            return f"it backs {device}, which is mounted on {mount.mount_point}"
    swap = next((row[0] for row in _rows(host, "/proc/swaps")[1:] if held(row[0])), None)
    return f"it backs {swap}, which the host swaps to" if swap else None


# --- virtio devices below the function: shares and consoles --------------------------------------------


def _virtio_devices(host: Host, function: str) -> Iterator[tuple[str, str | None]]:
    """Each virtio device below the function: its sysfs path and its driver."""
    for name in host.listdir(VIRTIO_DEVICES):
        device = host.resolve(f"{VIRTIO_DEVICES}/{name}")
        if device is not None and _is_under(device, function):
            yield device, host.link_name(f"{device}/driver")


def _virtiofs_tags(host: Host) -> dict[str, str]:
    """virtio device -> the tag it carries, where the kernel tells (/sys/fs/virtiofs, Linux 6.10 on)."""
    tags = {}
    for entry in host.listdir("/sys/fs/virtiofs"):
        device, tag = host.resolve(f"/sys/fs/virtiofs/{entry}/device"), host.read(f"/sys/fs/virtiofs/{entry}/tag")
        if device is not None and tag is not None:
            tags[device] = tag
    return tags


def _mounted_share(host: Host, function: str) -> str | None:
    shares = [(device, SHARE_DRIVERS[driver]) for device, driver in _virtio_devices(host, function)
              if driver in SHARE_DRIVERS]
    if not shares:
        return None
    virtiofs_tags, mounts = _virtiofs_tags(host), _mounts(host)
    for device, fstype in shares:
        # 9p's mount_tag ends in a NUL on older kernels. A virtiofs device whose tag the kernel does not
        # tell may carry any virtiofs mount.
        tag = (host.read(f"{device}/mount_tag") or "").rstrip("\0") if fstype == "9p" else virtiofs_tags.get(device)
        mount = next((m for m in mounts if m.fstype == fstype and (tag is None or m.source == tag)), None)
        if mount is not None:
            return f"it carries the {fstype} share {mount.source}, which is mounted on {mount.mount_point}"
    return None


def _open_device_names(host: Host) -> set[str]:
    """The last name of each file any process holds open (as far as this user may look): a device's /dev name."""
    return {name for pid in host.listdir("/proc") if pid.isdigit() for fd in host.listdir(f"/proc/{pid}/fd")
            if (name := host.link_name(f"/proc/{pid}/fd/{fd}"))}


def _console_in_use(host: Host, function: str) -> str | None:
    """A virtio console (virtio-serial) with a port open: the guest agent's channel, or an hvc console. Which
    hvc belongs to which device sysfs does not tell, so any hvc in use keeps every virtio console."""
    ports = [port for device, driver in _virtio_devices(host, function) if driver == "virtio_console"
             for port in host.listdir(f"{device}/virtio-ports")]
    if not ports:
        return None
    in_use = _open_device_names(host) | set((host.read("/sys/class/tty/console/active") or "").split())
    port = next((port for port in ports if port in in_use), None)
    if port is not None:
        name = host.read(f"/sys/class/virtio-ports/{port}/name")
        return f"it is a virtio console whose port {name or port} is open"
    hvc = next((name for name in sorted(in_use) if HVC.fullmatch(name)), None)
    return f"it is a virtio console, and the console {hvc} is in use" if hvc else None


# --- the default route ---------------------------------------------------------------------------------


def _default_route_interfaces(host: Host) -> list[str]:
    ipv4 = [row[0] for row in _rows(host, "/proc/net/route")[1:] if len(row) > 1 and row[1] == "00000000"]
    ipv6 = [row[9] for row in _rows(host, "/proc/net/ipv6_route") if len(row) > 9 and row[0] == "0" * 32
            and row[1] == "00" and row[9] != "lo"]
    return sorted(set(ipv4 + ipv6))


def _default_route_nic(host: Host, function: str) -> str | None:
    """The function as a NIC carrying the default route, itself or below a bridge, bond or VLAN."""
    pending = [(interface, interface) for interface in _default_route_interfaces(host)]
    seen = set()
    while pending:
        interface, route = pending.pop()
        if interface in seen:
            continue
        seen.add(interface)
        if _is_under(host.resolve(f"/sys/class/net/{interface}/device"), function):
            through = f" (through {route})" if route != interface else ""
            return f"it is {interface}, which carries the host's default route{through}"
        lower = [entry.removeprefix("lower_") for entry in host.listdir(f"/sys/class/net/{interface}")
                 if entry.startswith("lower_")]
        pending += [(name, route) for name in lower]
    return None


def is_boot_vga(host: Host, address: str) -> bool:
    """The display the firmware and the host's console use."""
    return host.read(f"{PCI_DEVICES}/{address}/boot_vga") == "1"


def why_host_needs(host: Host, address: str) -> str | None:
    """A reason taking this function from its host driver would hurt the host itself, or None."""
    if is_boot_vga(host, address):
        return "it is the boot VGA device (the host console)"
    device_class = host.read(f"{PCI_DEVICES}/{address}/class") or ""
    critical = next((why for prefix, why in HOST_CRITICAL_CLASSES.items() if device_class.startswith(prefix)), None)
    if critical:
        return critical
    function = host.resolve(f"{PCI_DEVICES}/{address}")
    if function is None:
        return None
    return (_busy_block_device(host, function) or _mounted_share(host, function)
            or _default_route_nic(host, function) or _console_in_use(host, function))
