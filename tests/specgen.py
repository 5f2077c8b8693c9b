"""Hypothesis strategies for (nearly) valid spec documents: every device kind, odd-but-legal ids, tags and names.

The fuzz feeds them to the CLI; the qemu oracle (integration/test_qemu_oracle.py) renders them and starts
qemu, so what it draws must be valid on the host it runs on: ``Files`` says which real files, directories
and host abilities there are.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import attrs
from hypothesis import strategies as st

from vmrun.spec.check import RESERVED_IDS

# ids as the spec allows them, and some that validate must refuse because qemu would: too long for a block
# node name ("<id>-file"), the firmware's drive names, node names that collide ("a" makes "a-file").
DEVICE_IDS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_-]{0,30}", fullmatch=True).filter(lambda device_id: device_id not in RESERVED_IDS),
    st.sampled_from(["a", "a-file", "pflash0", "pflash1", "d" * 26, "d" * 27]),
)
# Words qemu or the option parser might trip on, all legal in a spec.
ODD_TEXT = st.sampled_from(["a,b", "a,,b", "x=y", "with space", " lead", "trail ", "ü-tf8", "a\\b", "'q\"", ",", "="])
# Printable text with no control characters (the loader refuses those).
PRINTABLE = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=20)


@attrs.frozen
class Files:
    """What the drawn specs may point at. For the oracle these exist; for the fuzz they need not."""

    raw_images: tuple[Path, ...]
    qcow2_images: tuple[Path, ...]
    share_dirs: tuple[Path, ...]
    kernel: Path
    initrd: Path
    name_prefix: str = ""  # the oracle's VMs (and so their derived taps) carry its prefix
    tap_prefix: str = "t"  # explicit tap names start with this
    vhost_net: bool = False  # whether vhost = true may be drawn (it needs a usable /dev/vhost-net)
    host_only: bool = False  # draw only what qemu itself sees: no vfio, no passthrough, no bridges
    forward_ports: tuple[int, ...] = (2222, 8022, 8080, 65535)  # host ports user-mode NICs may forward (free ones)


def mac_addresses() -> st.SearchStrategy[str]:
    octets = st.lists(st.integers(0, 255), min_size=6, max_size=6).filter(lambda o: any(o)).map(
        lambda o: [o[0] & 0xFE, *o[1:]]  # unicast
    )
    return st.tuples(octets, st.booleans()).map(
        lambda drawn: ":".join(f"{octet:02X}" if drawn[1] else f"{octet:02x}" for octet in drawn[0])
    )


def tap_names(prefix: str) -> st.SearchStrategy[str]:
    # Interface names may hold commas, dots, '=' and '+'; at most 15 bytes.
    tail = st.text(alphabet=string.ascii_lowercase + string.digits + ".,=+_-", min_size=1, max_size=15 - len(prefix))
    return tail.map(lambda text: prefix + text)


def mount_tags() -> st.SearchStrategy[str]:
    text = st.one_of(ODD_TEXT, PRINTABLE.filter(lambda tag: tag.strip() == tag))
    return text.filter(lambda tag: tag not in ("", "help", "?") and len(tag.encode()) <= 31)


@st.composite
def disks(draw: st.DrawFn, files: Files, ids: list[str]) -> list[dict[str, Any]]:
    drawn: list[dict[str, Any]] = []
    written: set[Path] = set()
    used: set[Path] = set()
    for disk_id in ids:
        disk_format = draw(st.sampled_from(["raw", "qcow2"]))
        readonly = draw(st.booleans())
        images = files.raw_images if disk_format == "raw" else files.qcow2_images
        # qemu locks an image it writes: a written image is nobody else's, a read-only one may be shared.
        free = [image for image in images if image not in (used if not readonly else written)]
        if not free:
            continue
        path = draw(st.sampled_from(free))
        used.add(path)
        if not readonly:
            written.add(path)
        cache = draw(st.sampled_from(["none", "writeback", "writethrough", "directsync", "unsafe"]))
        direct = cache in ("none", "directsync")
        disk: dict[str, Any] = {
            "id": disk_id, "path": str(path), "format": disk_format, "cache": cache,
            "aio": draw(st.sampled_from(["threads", "native", "io_uring"] if direct else ["threads", "io_uring"])),
            "discard": draw(st.booleans()), "readonly": readonly,
        }
        if draw(st.booleans()):
            disk["size"] = draw(st.sampled_from(["1M", "64M", "1G", 4]))
        if not files.host_only and disk_format == "raw" and draw(st.integers(0, 4)) == 0:
            disk = {"id": disk_id, "path": f"/dev/disk/by-id/{disk_id}", "passthrough": True, "readonly": readonly}
        drawn.append(disk)
    return drawn


def user_nic(draw: st.DrawFn, nic_id: str, free_ports: list[int]) -> dict[str, Any]:
    """A user-mode NIC whose forwards take host ports from free_ports, none twice in the VM."""
    nic: dict[str, Any] = {"id": nic_id, "mode": "user", "restrict": draw(st.booleans())}
    forwards = []
    for _ in range(draw(st.integers(0, min(2, len(free_ports))))):
        port = free_ports.pop(draw(st.integers(0, len(free_ports) - 1)))
        address = draw(st.sampled_from(["", "127.0.0.1:", "0.0.0.0:"]))
        forwards.append(f"{draw(st.sampled_from(['tcp', 'udp']))}:{address}{port}:{draw(st.integers(1, 65535))}")
    if forwards or draw(st.booleans()):
        nic["forward"] = forwards
    return nic


@st.composite
def nics(draw: st.DrawFn, files: Files, ids: list[str], cpus: int) -> list[dict[str, Any]]:
    drawn = []
    taps = draw(st.lists(tap_names(files.tap_prefix), min_size=len(ids), max_size=len(ids), unique=True))
    macs = draw(st.lists(mac_addresses(), min_size=len(ids), max_size=len(ids), unique_by=str.lower))
    free_ports = list(files.forward_ports)
    for nic_id, tap, mac in zip(ids, taps, macs, strict=True):
        if draw(st.integers(0, 3)) == 0:
            drawn.append({**user_nic(draw, nic_id, free_ports), **({"mac": mac} if draw(st.booleans()) else {})})
            continue
        nic: dict[str, Any] = {"id": nic_id, "queues": draw(st.integers(1, min(cpus, 8)))}
        if draw(st.booleans()):
            nic["tap"] = tap
        nic["vhost"] = draw(st.sampled_from([False, "auto", *([True] if files.vhost_net else [])]))
        if draw(st.booleans()):
            nic["mac"] = mac
        if not files.host_only and draw(st.booleans()):
            nic["bridge"] = draw(st.sampled_from(["br0", "br,1", "virbr0"]))
        drawn.append(nic)
    return drawn


@st.composite
def shares(draw: st.DrawFn, files: Files, ids: list[str]) -> list[dict[str, Any]]:
    tags = draw(st.lists(mount_tags(), min_size=len(ids), max_size=len(ids), unique=True))
    return [
        {
            "id": share_id, "path": str(draw(st.sampled_from(files.share_dirs))), "tag": tag,
            "security_model": draw(st.sampled_from(["passthrough", "mapped-xattr", "mapped-file", "none"])),
            "readonly": draw(st.booleans()),
        }
        for share_id, tag in zip(ids, tags, strict=True)
    ]


def vfio_devices(ids: list[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    addresses = st.lists(st.from_regex(r"([0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", fullmatch=True),
                         min_size=len(ids), max_size=len(ids), unique_by=lambda a: a[-7:])
    return addresses.map(lambda found: [{"id": i, "host": a} for i, a in zip(ids, found, strict=True)])


@st.composite
def valid_specs(draw: st.DrawFn, files: Files) -> dict[str, Any]:
    """A spec document that is valid but for the limits qemu sets (which validate must find), drawn so that
    two devices never take one id, tap, MAC or tag."""
    name = files.name_prefix + draw(st.from_regex(r"[a-z0-9][a-z0-9-]{0,15}", fullmatch=True))
    # Now and then the most vCPUs TCG takes: qemu needs ~8 s to set 255 of them up, so not often.
    cpus = draw(st.integers(1, 4)) if draw(st.integers(0, 15)) != 7 else draw(st.sampled_from([255, 256, 288, 289]))
    counts = [draw(st.integers(0, 3)) for _ in range(4)]
    if files.host_only:
        counts[3] = 0
    ids = draw(st.lists(DEVICE_IDS, min_size=sum(counts), max_size=sum(counts), unique=True))
    disk_ids, nic_ids = ids[: counts[0]], ids[counts[0] : counts[0] + counts[1]]
    share_ids, vfio_ids = ids[sum(counts[:2]) : sum(counts[:3])], ids[sum(counts[:3]) :]
    data: dict[str, Any] = {
        "name": name,
        "machine": {
            "type": draw(st.sampled_from(["q35", "pc", "pc-q35-7.2", "pc-i440fx-7.2"])),
            "accel": draw(st.sampled_from(["tcg", "auto"])),
            "cpus": cpus,
            "memory": draw(st.sampled_from([16, 64, 200, "128M", "256M"])),
        },
        "disks": draw(disks(files, disk_ids)),
        "nics": draw(nics(files, nic_ids, cpus)),
        "shares": draw(shares(files, share_ids)),
        "vfio": draw(vfio_devices(vfio_ids)),
        "agent": {"enabled": draw(st.booleans()), "timeout": draw(st.sampled_from(["1s", "90s", "24h", 0.5]))},
        "host": {"user": draw(st.sampled_from(["vmrun", "nobody"])), "ksm": False},
    }
    cpu_model = draw(st.sampled_from([None, "max", "qemu64", "Nehalem"]))
    if cpu_model is not None:
        data["machine"]["cpu_model"] = cpu_model
    if draw(st.booleans()):
        data["description"] = draw(st.one_of(ODD_TEXT, PRINTABLE))
    bootable = [disk["id"] for disk in data["disks"]]
    firmware = draw(st.sampled_from(["bios", "uefi"]))
    if bootable and draw(st.booleans()):
        data["boot"] = {"disk": draw(st.sampled_from(bootable)), "firmware": firmware}
    else:
        data["boot"] = {"kernel": str(files.kernel), "initrd": str(files.initrd), "firmware": firmware,
                        "append": draw(st.one_of(ODD_TEXT, PRINTABLE))}
    if data["agent"]["enabled"]:
        data["post_boot"] = draw(st.lists(
            st.fixed_dictionaries({"run": st.lists(PRINTABLE, min_size=1, max_size=3),
                                   "timeout": st.sampled_from(["1s", "10m", "24h"])}),
            max_size=2,
        ))
    return data
