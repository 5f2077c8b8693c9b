"""`vmrun snapshot`: a VM's RAM, devices and writable disks at one instant, kept inside its qcow2 disks.

qemu is the source of truth: a running VM's snapshots are what query-named-block-nodes says, a stopped VM's
what qemu-img reads in its disk files. vmrun keeps no list of its own that could disagree with them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from vmrun.errors import LaunchError, Problem, SpecError, UsageError
from vmrun.host.system import Host, HostCommandError
from vmrun.progress import Say
from vmrun.record import Record
from vmrun.run.ending import running_state
from vmrun.spec.model import Disk, DiskFormat, Spec
from vmrun.state.locations import Places, RunPaths
from vmrun.state.locks import vm_lock
from vmrun.state.vmstate import recorded_configuration
from vmrun.units import iso_time

if TYPE_CHECKING:
    from vmrun.qemu.monitor import Monitor

# qemu finds a snapshot by its id or its tag, and ids are numbers: a tag starts with a letter so that it never
# names another snapshot. A leading '-' would make it an option of qemu-img.
TAG = re.compile(r"[a-z][a-z0-9._-]{0,62}")
TAG_RULE = "use 1-63 of a-z, 0-9, '.', '_' and '-', starting with a letter"
JOB_ID = "vmrun-snapshot"
CONNECT_TIMEOUT = 10.0


@attrs.frozen(repr=False)
class Target(Record):
    """The VM a command names: by name, or by its spec (source: the path the user gave), which a stopped VM
    needs, because its disks are written nowhere else once `down` removed its run directory."""

    name: str
    spec: Spec | None = None
    source: str | None = None


@attrs.frozen(repr=False)
class Snapshot(Record):
    tag: str
    date: float  # seconds since the epoch, when it was taken
    vm_state_size: int  # bytes of RAM and device state; 0 for a disk-only snapshot (qemu-img snapshot -c)
    guest_clock: float  # seconds the guest had run
    disks: tuple[str, ...]  # the ids of the disks that hold it
    vm_state_disk: str | None  # the disk that holds its RAM

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag, "date": iso_time(self.date),
                "vm_state_size": self.vm_state_size, "guest_clock": self.guest_clock, "disks": list(self.disks)}


@attrs.frozen(repr=False)
class Snapshots(Record):
    name: str
    state: str  # running | stopped
    snapshots: tuple[Snapshot, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "snapshots": [found.to_json() for found in self.snapshots]}

    def find(self, tag: str) -> Snapshot:
        found = next((snapshot for snapshot in self.snapshots if snapshot.tag == tag), None)
        if found is None:
            raise UsageError(f"{self.name} has no snapshot {tag!r}", hint=f"vmrun snapshot list {self.name}")
        return found


def check_tag(tag: str) -> None:
    if TAG.fullmatch(tag) is None:
        raise UsageError(f"{tag!r} is not a snapshot tag", hint=TAG_RULE)


def holding_disks(spec: Spec) -> list[Disk]:
    """The disks that can hold internal snapshots: written by the guest, qcow2 images."""
    return [disk for disk in spec.disks
            if not disk.readonly and not disk.passthrough and disk.format is DiskFormat.QCOW2]


def snapshot_problems(spec: Spec) -> list[Problem]:
    """Why the VM's state at one instant cannot be saved whole: a written disk that cannot hold a snapshot, or
    one that will not keep it, and devices whose state lives outside qemu."""
    problems = []
    for index, disk in enumerate(spec.disks):
        where = f"disks[{index}]"
        if disk.readonly:
            continue
        if disk.passthrough:
            problems.append(Problem(where, "a passed-through host block device cannot hold a snapshot"))
        elif disk.format is DiskFormat.RAW:
            problems.append(Problem(where, "a raw disk cannot hold a snapshot",
                                    f"convert it: qemu-img convert -O qcow2 {disk.path} NEW.qcow2, and name NEW.qcow2 "
                                    'with format = "qcow2"'))
        elif disk.ephemeral:
            problems.append(Problem(where, "an ephemeral disk is deleted at down, and its snapshots with it",
                                    "drop ephemeral = true to keep the overlay"))
    problems += [Problem(f"vfio[{index}]", "a passed-through device's state cannot be saved")
                 for index, _ in enumerate(spec.vfio)]
    if not problems and not holding_disks(spec):
        problems.append(Problem("disks", "no writable qcow2 disk to keep the snapshot in",
                                "add one; its file holds the RAM too"))
    return problems


def save(target: Target, tag: str, host: Host, places: Places, *, timeout: float, say: Say) -> Snapshot:
    """A running VM's RAM, devices and writable disks, at one instant, as `tag`."""
    with _running_guest(target, tag, host, places, say=say, action="save",
                        refusal="a snapshot saves a running guest") as (spec, disks, monitor):
        if any(found.tag == tag for found in _running_listing(monitor, target.name, spec).snapshots):
            raise UsageError(f"{target.name} already has a snapshot {tag!r}",
                             hint=f"vmrun snapshot rm {target.name} {tag}, or choose another tag")
        started = time.monotonic()
        monitor.run_job("snapshot-save", {"tag": tag, "vmstate": disks[0].id, "devices": _ids(disks)},
                        job_id=JOB_ID, what=f"save snapshot {tag!r}", timeout=timeout)
        saved = _running_listing(monitor, target.name, spec).find(tag)
    say(f"{target.name}: saved snapshot {tag} ({_size(saved.vm_state_size)} of RAM and devices, "
        f"{time.monotonic() - started:.1f} s)")
    return saved


def restore(target: Target, tag: str, host: Host, places: Places, *, timeout: float, say: Say) -> Snapshot:
    """The running guest goes on from the snapshot's instant: its RAM, devices and disks as they were then."""
    # A stopped VM is refused: starting it here would run its boot and hooks only to throw their work away.
    with _running_guest(target, tag, host, places, say=say, action="restore",
                        refusal="restore continues a running guest") as (spec, disks, monitor):
        found = _running_listing(monitor, target.name, spec).find(tag)
        missing = [f"disks[{spec.disks.index(disk)}] ({disk.id})" for disk in disks if disk.id not in found.disks]
        if missing:
            raise UsageError(f"{target.name}: snapshot {tag!r} is not on {', '.join(missing)}: the disk came "
                             "after it, and would not go back with the rest")
        if found.vm_state_disk is None:
            raise UsageError(f"{target.name}: snapshot {tag!r} holds disks only, no RAM to go on from",
                             hint=f"on the stopped VM: qemu-img snapshot -a {tag} on each disk")
        started = time.monotonic()
        monitor.run_job("snapshot-load", {"tag": tag, "vmstate": found.vm_state_disk, "devices": _ids(disks)},
                        job_id=JOB_ID, what=f"load snapshot {tag!r}", timeout=timeout)
    say(f"{target.name}: back at snapshot {tag} ({time.monotonic() - started:.1f} s)")
    return found


def remove(target: Target, tag: str, host: Host, places: Places, *, timeout: float, say: Say) -> None:
    """The snapshot deleted from every disk that holds it: through qemu while it runs, else with qemu-img."""
    check_tag(tag)
    with vm_lock(places, target.name, wait=False, say=say):
        spec, running = _resolve(target, host, places)
        spec = _known(spec, target, "rm")
        if running:
            with _monitor(places.of(target.name)) as monitor:
                found = _running_listing(monitor, target.name, spec).find(tag)
                monitor.run_job("snapshot-delete", {"tag": tag, "devices": list(found.disks)}, job_id=JOB_ID,
                                what=f"delete snapshot {tag!r}", timeout=timeout)
        else:
            found = _stopped_listing(host, target.name, spec).find(tag)
            paths = {disk.id: disk.path for disk in spec.disks}
            for disk_id in found.disks:
                _qemu_img(host, ["qemu-img", "snapshot", "-d", tag, str(paths[disk_id])], timeout=timeout)
    say(f"{target.name}: removed snapshot {tag} from {', '.join(found.disks)}")


def listing(target: Target, host: Host, places: Places) -> Snapshots:
    """A read, like `status`: it takes no lock, and qemu-img reads disk files another process may hold."""
    spec, running = _resolve(target, host, places)
    spec = _known(spec, target, "list")
    if not running:
        return _stopped_listing(host, target.name, spec)
    with _monitor(places.of(target.name)) as monitor:
        return _running_listing(monitor, target.name, spec)


@contextmanager
def _running_guest(target: Target, tag: str, host: Host, places: Places, *, say: Say, action: str,
                   refusal: str) -> Iterator[tuple[Spec, list[Disk], Monitor]]:
    """Under the VM's lock: the spec it runs with, the disks that hold its snapshots, and its monitor; a VM
    that does not run is refused (refusal says why it must)."""
    check_tag(tag)
    with vm_lock(places, target.name, wait=False, say=say):
        spec, running = _resolve(target, host, places)
        disks = _savable(spec, target.name) if spec is not None else []
        if spec is None or not running:
            raise UsageError(f"{target.name} is not running: {refusal}",
                             hint=f"vmrun up {target.source or 'SPEC'}, then: vmrun snapshot {action} {target.name} "
                                  f"{tag}")
        with _monitor(places.of(target.name)) as monitor:
            yield spec, disks, monitor


def _resolve(target: Target, host: Host, places: Places) -> tuple[Spec | None, bool]:
    """The spec the VM runs with (what its qemu has, even if its file changed since), else the one given; and
    whether it runs."""
    state = running_state(host, places.of(target.name), target.name)
    if state is None:
        return target.spec, False
    return recorded_configuration(state).spec or target.spec, True


def _known(spec: Spec | None, target: Target, action: str) -> Spec:
    if spec is None:
        raise UsageError(f"{target.name} is not running, and a name alone does not say where its disks are",
                         hint=f"name its spec: vmrun snapshot {action} SPEC")
    return spec


def _savable(spec: Spec, name: str) -> list[Disk]:
    problems = snapshot_problems(spec)
    if problems:
        raise SpecError(name, problems)
    return holding_disks(spec)


def _ids(disks: list[Disk]) -> list[str]:
    return [disk.id for disk in disks]


def _monitor(paths: RunPaths) -> AbstractContextManager[Monitor]:
    from vmrun.qemu.monitor import Monitor  # qemu.qmp: not for listing a stopped VM's snapshots

    return Monitor.connected(paths.qmp_socket, timeout=CONNECT_TIMEOUT)


def _running_listing(monitor: Monitor, name: str, spec: Spec) -> Snapshots:
    nodes = {node.get("node-name"): node for node in monitor.block_nodes()}
    held = [(disk.id, nodes.get(disk.id, {}).get("image", {}).get("snapshots", [])) for disk in holding_disks(spec)]
    return Snapshots(name, "running", _merged(held))


def _stopped_listing(host: Host, name: str, spec: Spec) -> Snapshots:
    held = []
    for disk in holding_disks(spec):
        if not disk.path.exists():  # an overlay `up` has not made yet holds nothing
            continue
        try:
            info = host.disk_image_info(disk.path)
        except HostCommandError as exc:
            raise LaunchError(f"{name}: qemu-img cannot read {disk.path}: {exc}") from exc
        held.append((disk.id, info.get("snapshots", [])))
    return Snapshots(name, "stopped", _merged(held))


def _merged(held: list[tuple[str, list[dict[str, Any]]]]) -> tuple[Snapshot, ...]:
    """One snapshot per tag across the disks (qemu gives each disk its own copy of the record); its date and
    clock from the disk holding its RAM."""
    by_tag: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for disk_id, entries in held:
        for entry in entries:
            by_tag.setdefault(str(entry.get("name")), []).append((disk_id, entry))
    snapshots = []
    for tag, copies in by_tag.items():
        ram_disk, main = max(copies, key=lambda copy: int(copy[1].get("vm-state-size", 0)))
        size = int(main.get("vm-state-size", 0))
        snapshots.append(Snapshot(
            tag=tag, date=main.get("date-sec", 0) + main.get("date-nsec", 0) / 1e9, vm_state_size=size,
            guest_clock=main.get("vm-clock-sec", 0) + main.get("vm-clock-nsec", 0) / 1e9,
            disks=tuple(disk_id for disk_id, _ in copies), vm_state_disk=ram_disk if size else None,
        ))
    return tuple(sorted(snapshots, key=lambda snapshot: (snapshot.date, snapshot.tag)))


def _qemu_img(host: Host, argv: list[str], *, timeout: float) -> None:
    try:
        host.run(argv, timeout=timeout)
    except HostCommandError as exc:
        raise LaunchError(f"{' '.join(argv[:2])} failed: {exc}") from exc


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def table(snapshots: Snapshots) -> list[str]:
    """`snapshot list` for people: local dates, sizes in MiB, the guest's clock as hours:minutes:seconds."""
    rows = [("TAG", "DATE", "VM STATE", "GUEST CLOCK", "DISKS")]
    for found in snapshots.snapshots:
        minutes, seconds = divmod(found.guest_clock, 60)
        rows.append((found.tag, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found.date)),
                     _size(found.vm_state_size), f"{int(minutes // 60):02d}:{int(minutes % 60):02d}:{seconds:06.3f}",
                     ",".join(found.disks)))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
            for row in rows]
