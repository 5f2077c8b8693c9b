"""Live migration: `vmrun migrate` on the source, its hidden counterpart `migrate NAME --incoming` on the
destination, talking JSON lines over the remote shell's stdin and stdout.

The source sends {"spec", "spec_path", "copy_storage"} (and with a cloud-init seed {"seed", "seed_id"}, the
seed's bytes in base64); the destination answers {"address", "port"} once its qemu listens
(-incoming defer); the source migrates straight to that port and then sends {"switched": true} or
{"abort": true}; the destination answers {"state": "running"} once the guest runs there.
"""

from __future__ import annotations

import base64
import json
import queue
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import attrs

from vmrun.crashpoints import crash_point
from vmrun.errors import LaunchError, PreflightError, Problem, SpecError, UsageError, VmrunError
from vmrun.guest.cloudinit import place_seed
from vmrun.host.facts import gather_facts
from vmrun.host.system import Host
from vmrun.progress import Meter, Say
from vmrun.qemu.migration import FINISHED, POLL, MigrationMonitor, Mirror, Progress
from vmrun.record import Record
from vmrun.run.ending import abort_start, clear_dead_run, running_state, stop_and_undo
from vmrun.run.lifecycle import (
    apply_preflight,
    checked_program,
    configuration_of,
    holding_bases,
    launch_qemu,
    prepare_uefi_vars,
    say_plan,
)
from vmrun.run.status import run_state
from vmrun.signals import shielded, sigterm_interrupts
from vmrun.spec.check import validate
from vmrun.spec.load import converter, structure_spec
from vmrun.spec.model import ByteSize, Spec
from vmrun.state.glance import INCOMING, MIGRATED, OUTGOING, has_run
from vmrun.state.leftdisks import forget_left, is_left, record_left
from vmrun.state.locations import Places, RunPaths
from vmrun.state.locks import vm_lock
from vmrun.state.vmstate import mark_migration, read_state, recorded_configuration

READY_TIMEOUT = 300.0  # the destination's preflight, qemu start and perhaps a base image download
CONFIRM_TIMEOUT = 60.0  # from the switch-over until the destination says the guest runs there
QUIT_WAIT = 30.0  # the remote shell ends once the destination vmrun has cleaned up


class RemoteError(VmrunError):
    """The destination's vmrun failed: its own lines (relayed) say why; its exit code is ours."""

    def __init__(self, message: str, *, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


@attrs.frozen(repr=False)
class Remote(Record):
    """How to run vmrun on the destination, after rsync: a remote shell command, a host and a command there."""

    host: str  # [USER@]HOST
    rsh: tuple[str, ...] = ("ssh",)
    vmrun: tuple[str, ...] = ("vmrun",)

    @classmethod
    def parse(cls, host: str, rsh: str, remote_vmrun: str) -> Remote:
        try:
            rsh_argv, vmrun_argv = tuple(shlex.split(rsh)), tuple(shlex.split(remote_vmrun))
        except ValueError as exc:
            raise UsageError(f"cannot split the remote shell or remote vmrun command: {exc}") from exc
        if not rsh_argv or not vmrun_argv or not host or host.startswith("-"):
            raise UsageError("--to, -e and --remote-vmrun must not be empty, and --to must not start with '-'")
        return cls(host=host, rsh=rsh_argv, vmrun=vmrun_argv)

    @property
    def address(self) -> str:
        return self.host.rpartition("@")[2]

    def argv(self, *args: str) -> list[str]:
        # A remote shell joins its arguments into one command line for the shell there, as rsync's does:
        # each word is quoted, so a VM name or path is never read as shell syntax.
        return [*self.rsh, self.host, shlex.join([*self.vmrun, *args])]


@attrs.frozen(repr=False)
class Moved(Record):
    name: str
    state: str
    to: str
    downtime_ms: int | None
    total_ms: int | None
    bytes: int | None  # RAM, device state and disks
    disk_bytes: int | None  # None: the disks did not move (shared storage)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(repr=False)
class Target(Record):
    """Where the destination's qemu listens: for the migration, and with --copy-storage for the disks."""

    address: str
    port: int
    disks: int | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def unmovable(spec: Spec) -> list[Problem]:
    """What no live migration can take along: the device itself stays on this host."""
    problems = [Problem(f"vfio[{index}]", f"a VFIO device ({vfio.host}) cannot be migrated",
                        hint="detach it (vmrun down, remove it from the spec, up) before moving the VM")
                for index, vfio in enumerate(spec.vfio)]
    problems += [Problem(f"disks[{index}].passthrough", "a SCSI passthrough disk cannot be migrated")
                 for index, disk in enumerate(spec.disks) if disk.passthrough]
    return problems


def mirrors_of(spec: Spec) -> list[Mirror]:
    """The disks --copy-storage copies: every writable one, an overlay's top alone (the destination
    creates the overlay on its own copy of the base, from the same path or through its image cache)."""
    return [Mirror(disk.id, top=disk.base is not None) for disk in spec.disks if not disk.readonly]


def migrate(name: str, remote: Remote, host: Host, places: Places, *, timeout: float, copy_storage: bool = False,
            say: Say) -> Moved:
    """Move the running VM to the destination; any failure before the switch-over leaves it running here."""
    paths = places.of(name)
    with vm_lock(places, name, wait=False, say=say), sigterm_interrupts():
        state = read_state(paths)
        spec = recorded_configuration(state).spec if state is not None else None
        # What cannot move is said first, even of a VM that does not run: no state of it could move either.
        if spec is not None and (problems := unmovable(spec)):
            raise SpecError(name, problems)
        if state is None or running_state(host, paths, name) is None:
            raise UsageError(f"{name} is not running here", hint=f"vmrun status {name}")
        if spec is None:
            raise UsageError(f"{name}: its state records no spec to send", hint=f"vmrun up --restart {name}")
        with MigrationMonitor.connected(paths.qmp_socket, timeout=10) as monitor:
            if (status := monitor.status()) != "running":
                raise UsageError(f"{name} is {status}, not running: only a running guest is migrated",
                                 hint=f"vmrun status {name}")
            if blocked := monitor.blocked_reasons():
                raise PreflightError(f"{name} cannot migrate now: qemu says: {'; '.join(blocked)}")
            mirrors = mirrors_of(spec) if copy_storage else []
            sent = _sized(spec, monitor, mirrors)
            offer = {"spec": converter.unstructure(sent), "spec_path": state.spec_path, "copy_storage": copy_storage,
                     **_seed_offer(spec, state.seed_id, paths)}
            crash_point("before starting the destination")
            with _Destination.start(remote, name, offer, say) as destination:
                target = destination.ready(remote.address, copy_storage=copy_storage)
                crash_point("after the destination is ready")
                disks = f", {len(mirrors)} disk(s) mirrored to port {target.disks}" if mirrors else ""
                say(f"migrating {name} to {remote.host} ({target.address}:{target.port}{disks})")
                # Marked before qemu may complete it: a kill before the next mark leaves a mark to ask qemu by.
                mark_migration(paths, OUTGOING)
                crash_point("after marking the migration outgoing")
                with Meter(f"{name} -> {remote.host}") as meter:
                    try:
                        done, copied = _send(monitor, destination, target, mirrors, timeout, meter)
                    except BaseException:
                        with shielded():  # the guest runs on here
                            mark_migration(paths, None)
                        raise
                mark_migration(paths, MIGRATED)
                if mirrors:  # the files here are the guest's no more: moving it back may replace them
                    record_left(host, paths, _paths_of(spec, mirrors))
                crash_point("after the migration completed")
                destination.switched()
        crash_point("after the destination runs the guest")
        stop_and_undo(host, places, name, timeout=0, force=True, say=say)
        moved = None if done.bytes is None or copied is None else done.bytes + copied
        return Moved(name=name, state="migrated", to=remote.host, downtime_ms=done.downtime_ms,
                     total_ms=done.total_ms, bytes=done.bytes if not mirrors else moved, disk_bytes=copied)


def _seed_offer(spec: Spec, seed_id: str | None, paths: RunPaths) -> dict[str, str | None]:
    """The cloud-init seed the guest runs with, for the destination to open the same bytes: its user's files
    need not be there, and a seed built anew there would differ (its ISO's times)."""
    if spec.cloud_init is None:
        return {}
    try:
        image = paths.cloud_init_seed.read_bytes()
    except OSError as exc:
        raise UsageError(f"{spec.name}: cannot read its cloud-init seed {paths.cloud_init_seed}: {exc.strerror}",
                         hint=f"vmrun up --restart {spec.name} builds it again") from exc
    return {"seed": base64.b64encode(image).decode(), "seed_id": seed_id}


def _sent_seed(offer: dict[str, Any], spec: Spec) -> tuple[bytes, str] | None:
    """The source's seed and its instance-id."""
    if spec.cloud_init is None:
        return None
    image, seed_id = offer.get("seed"), offer.get("seed_id")
    try:
        if isinstance(image, str) and isinstance(seed_id, str):
            return base64.b64decode(image, validate=True), seed_id
    except ValueError:
        pass
    raise UsageError("the source sent no cloud-init seed: is its vmrun as recent as this one?")


def _paths_of(spec: Spec, mirrors: list[Mirror]) -> list[str]:
    copied = {mirror.node for mirror in mirrors}
    return [str(disk.path) for disk in spec.disks if disk.id in copied]


def _sized(spec: Spec, monitor: MigrationMonitor, mirrors: list[Mirror]) -> Spec:
    """The spec for the destination: a copied disk created there needs the size the disk has here, which a
    spec that names an existing image does not give."""
    copied = {mirror.node for mirror in mirrors}
    if not any(disk.size is None for disk in spec.disks if disk.id in copied):
        return spec
    sizes = {node.get("node-name"): node.get("image", {}).get("virtual-size") for node in monitor.block_nodes()}
    return attrs.evolve(spec, disks=tuple(
        attrs.evolve(disk, size=ByteSize(int(sizes[disk.id])))
        if disk.id in copied and disk.size is None and isinstance(sizes.get(disk.id), int) else disk
        for disk in spec.disks))


def abort(name: str, host: Host, places: Places, *, say: Say) -> str:
    """`migrate --abort`: what a half-done migration left on this side, cleaned as `down --force` would, and
    a destination's run rolled back like a failed `up` (a disk it created for --copy-storage never held the
    running guest). The side that runs the guest is refused: it is the live copy."""
    paths = places.of(name)
    with vm_lock(places, name, wait=False, say=say):
        if not has_run(paths):
            raise UsageError(f"{name} has no run here: nothing to abort", hint="vmrun status")
        state = read_state(paths)
        alive = running_state(host, paths, name) is not None
        side = run_state(paths, state.migration if state is not None else None) if alive else "dead"
        if state is not None and (side == INCOMING or not alive and state.migration == INCOMING):
            abort_start(host, places, state, say)
            return "the destination's qemu that never got the guest"
        if side in (MIGRATED, "dead"):
            stop_and_undo(host, places, name, timeout=0, force=True, say=say)
            return "the source's qemu, paused since its guest left" if side == MIGRATED else "a run whose qemu died"
        raise UsageError(f"{name} is {side} here: this is the live copy, which --abort never stops",
                         hint=f"vmrun status {name} on the other host; vmrun down {name} stops it here")


def _send(monitor: MigrationMonitor, destination: _Destination, target: Target, mirrors: list[Mirror],
          timeout: float, meter: Meter) -> tuple[Progress, int | None]:
    """Copy the disks until in step, migrate and wait; a failure, a timeout or an interruption cancels it
    all, and the source runs on. A migration that completed all the same is the switch-over: the source is
    never resumed after it. Returns the migration's figures and the disks' bytes."""
    deadline = time.monotonic() + timeout
    try:
        if mirrors:
            assert target.disks is not None
            monitor.mirror(mirrors, target.address, target.disks)
            _wait_copied(monitor, mirrors, deadline, timeout, meter)
            crash_point("after the disks are in step")
        monitor.send(target.address, target.port)
        progress = _wait(monitor, deadline, meter)
    except BaseException:
        with shielded():
            progress = _cancelled(monitor)
            if progress.status != "completed":
                _give_up(monitor, destination, mirrors)
                raise
        return progress, _copied(monitor, mirrors)
    if progress.status != "completed":
        _give_up(monitor, destination, mirrors)
        if progress.status == "cancelled":
            raise LaunchError(f"the migration did not complete within {timeout:g} s; {monitor.peer} cancelled it "
                              "and the VM runs on here", hint="--timeout S allows more")
        raise LaunchError(f"the migration failed: {progress.error or progress.status}; the VM runs on here")
    return progress, _copied(monitor, mirrors)


def _wait_copied(monitor: MigrationMonitor, mirrors: list[Mirror], deadline: float, timeout: float,
                 meter: Meter) -> None:
    """Until every mirror is ready: the destination's disks hold what these do, and keep up with each write."""
    while not (copying := monitor.copying(mirrors)).ready:
        meter.show(copying.done, copying.total, label="disks")
        if time.monotonic() >= deadline:
            raise LaunchError(f"the disks were not copied within {timeout:g} s; the VM runs on here",
                              hint="--timeout S allows more")
        time.sleep(POLL)


def _copied(monitor: MigrationMonitor, mirrors: list[Mirror]) -> int | None:
    """The disks' bytes sent, read before the mirrors end; then each ends with the copy complete."""
    if not mirrors:
        return None
    try:
        copied: int | None = monitor.copying(mirrors).done
    except VmrunError:
        copied = None
    with suppress(VmrunError):  # the guest runs on the destination's copy whatever this qemu answers now
        monitor.end_mirrors(mirrors, detach=False)
    return copied


def _give_up(monitor: MigrationMonitor, destination: _Destination, mirrors: list[Mirror]) -> None:
    """Before the switch-over: the mirrors abandoned (the guest here writes its own disks on), the
    destination told to clean up."""
    if mirrors:
        with suppress(VmrunError):
            monitor.end_mirrors(mirrors, detach=True)
    destination.abort()


def _wait(monitor: MigrationMonitor, deadline: float, meter: Meter | None = None) -> Progress:
    cancelled = False
    while (progress := monitor.progress()).status not in FINISHED:
        if meter is not None and progress.bytes is not None:
            meter.show(progress.bytes, progress.bytes + (progress.remaining or 0), label="RAM")
        if not cancelled and time.monotonic() >= deadline:
            monitor.cancel()
            cancelled = True
        time.sleep(POLL)
    return progress


def _cancelled(monitor: MigrationMonitor) -> Progress:
    """Cancel a migration under way and tell how it ended; a monitor that cannot be asked counts as failed."""
    try:
        progress = monitor.progress()
        if progress.status == "none":  # never started: nothing to cancel, nothing that could complete
            return progress
        if progress.status not in FINISHED:
            monitor.cancel()
        return _wait(monitor, float("inf"))
    except VmrunError as exc:
        return Progress(status="failed", error=str(exc))


class _Destination:
    """The destination's vmrun behind the remote shell: its stdout read as JSON lines, its stderr relayed."""

    def __init__(self, remote: Remote, process: subprocess.Popen[str], say: Say) -> None:
        self.remote, self.process, self.say = remote, process, say
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(process.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._read, args=(process.stderr, self._relay), daemon=True).start()

    @classmethod
    @contextmanager
    def start(cls, remote: Remote, name: str, offer: dict[str, Any], say: Say) -> Iterator[_Destination]:
        argv = remote.argv("migrate", name, "--incoming")
        try:
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, start_new_session=True)
        except OSError as exc:
            raise UsageError(f"cannot run the remote shell {remote.rsh[0]!r}: {exc.strerror}") from exc
        destination = cls(remote, process, say)
        try:
            destination.tell(offer)
            yield destination
        finally:
            with shielded():
                destination.close()

    @staticmethod
    def _read(stream: IO[str] | None, put: Any) -> None:
        assert stream is not None
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def _relay(self, line: str | None) -> None:
        if line:
            self.say(f"{self.remote.address}: {line.removeprefix('vmrun: ')}")

    def tell(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        with suppress(BrokenPipeError):
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()

    def answer(self, timeout: float, waiting_for: str) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise LaunchError(f"{self.remote.host} did not answer within {timeout:g} s ({waiting_for})") from None
        if line is None:
            raise self._failed(waiting_for)
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise LaunchError(f"{self.remote.host} answered something unexpected: {line!r:.200}",
                              hint="does --remote-vmrun run vmrun there?")
        return message

    def _failed(self, waiting_for: str) -> VmrunError:
        code = self.process.wait(timeout=QUIT_WAIT)
        # vmrun's own exit codes pass through; the remote shell's (ssh: 255) or a missing vmrun is a failure to run.
        exit_code = code if code in (2, 3, 4, 5) else 4
        return RemoteError(f"the destination {self.remote.host} failed (exit {code}) {waiting_for}; the VM runs "
                           "on here", exit_code=exit_code)

    def ready(self, reached: str, *, copy_storage: bool) -> Target:
        """Where to send; the destination's own address when it knows which one we reached it on."""
        message = self.answer(READY_TIMEOUT, "while getting ready")
        address, port, disks = message.get("address"), message.get("port"), message.get("disks")
        if not isinstance(port, int) or not (address is None or isinstance(address, str)) \
                or not isinstance(disks, int) and copy_storage:
            raise LaunchError(f"{self.remote.host} answered something unexpected: {message!r:.200}")
        return Target(address=address or reached, port=port, disks=disks if copy_storage else None)

    def switched(self) -> None:
        self.tell({"switched": True})
        crash_point("after telling the destination the migration completed")
        try:
            message = self.answer(CONFIRM_TIMEOUT, "after the switch-over")
        except VmrunError as exc:
            raise LaunchError(f"{exc}; the guest's state has left this host, whose qemu stays paused",
                              hint=f"vmrun status on {self.remote.host} says whether the VM runs there") from exc
        if message.get("state") != "running":
            raise LaunchError(f"{self.remote.host} reports the guest {message.get('state')!r} after the switch-over")

    def abort(self) -> None:
        self.tell({"abort": True})
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=QUIT_WAIT)

    def close(self) -> None:
        if self.process.stdin is not None:
            with suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=QUIT_WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def migrate_in(name: str, host: Host, places: Places, incoming: IO[str], outgoing: IO[str], *, address: str | None,
               say: Say) -> None:
    """The destination: the source's spec validated, preflight, qemu waiting for the migration; it keeps
    the guest once its migration completed, and otherwise undoes everything."""
    offer = _offer(incoming.readline())
    spec, spec_path = _movable(offer, name)
    copy_storage = offer.get("copy_storage") is True
    paths = places.of(name)
    with vm_lock(places, name, wait=False, say=say), sigterm_interrupts():
        if copy_storage and (present := _present(spec, host, paths)):
            raise SpecError(f"{name} (--copy-storage)", present)
        facts = gather_facts(host, spec.qemu.binary, asked_to_run=True)
        seed = _sent_seed(offer, spec)
        configuration, _ = configuration_of(spec, spec_path, facts, paths, seed_id=seed[1] if seed else None)
        with holding_bases(spec, places, say):
            clear_dead_run(host, places, name, say)
            if copy_storage:
                _replace_left(spec, host, paths, say)
            # Marked incoming from its first record: status tells a destination still waiting from a VM that runs.
            plan, journal = apply_preflight(spec, spec_path, host, places, facts, configuration=configuration,
                                            show=lambda plan: say_plan(plan, say), say=say, migration=INCOMING)
        try:
            prepare_uefi_vars(spec, paths, facts, fresh=False, say=say)
            if seed is not None:
                place_seed(seed[0], paths)
            argv = [str(checked_program(facts)), *configuration.argv[1:], "-incoming", "defer"]
            crash_point("before launching the incoming qemu")
            pid = launch_qemu(spec, argv, paths, memlock=plan.memlock)
            crash_point("after launching the incoming qemu")
            say(f"qemu pid {pid} waits for the migration")
            with MigrationMonitor.connected(paths.qmp_socket, timeout=10) as monitor:
                port = monitor.listen(address or "0.0.0.0")
                disks = monitor.export(address or "0.0.0.0", [mirror.node for mirror in mirrors_of(spec)]) \
                    if copy_storage else None
                crash_point("after listening for the migration")
                _write(outgoing, {"address": address, "port": port, "disks": disks})
                crash_point("after telling the source where to send")
                told = _offer(incoming.readline())
                if not told.get("switched") and not _arrived(monitor):
                    raise LaunchError("the source gave up the migration")
                crash_point("before confirming the switch-over")
                _wait_running(monitor)
                mark_migration(paths, None)
                if copy_storage:
                    with suppress(VmrunError):  # the guest runs on its own files whatever the server does
                        monitor.unexport()
        except BaseException:
            with shielded():
                abort_start(host, places, journal.state, say)
            raise
        # The guest runs here now, whether or not the source is still there to hear it.
        with suppress(OSError):
            say(f"{name} runs here now (qemu pid {pid})")
            _write(outgoing, {"state": "running"})


def _offer(line: str) -> dict[str, Any]:
    """A message from the source; end of input (the source went away) is an empty one."""
    if not line:
        return {}
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise UsageError("the source sent something that is not JSON: is this `vmrun migrate`?") from exc
    if not isinstance(message, dict):
        raise UsageError("the source sent something unexpected")
    return message


def _movable(offer: dict[str, Any], name: str) -> tuple[Spec, Path]:
    data, spec_path = offer.get("spec"), offer.get("spec_path")
    if not isinstance(data, dict) or not isinstance(spec_path, str):
        raise UsageError("the source sent no spec: the destination side is started by `vmrun migrate`")
    structured = structure_spec(data, base=Path("/"))
    if structured.problems:
        raise SpecError(f"{name} (from the source)", structured.problems)
    spec = validate(structured.spec, f"{name} (from the source)")
    if spec.name != name:
        raise UsageError(f"the source sent the spec of {spec.name!r}, not of {name!r}")
    if problems := unmovable(spec):
        raise SpecError(name, problems)
    return spec, Path(spec_path)


def _present(spec: Spec, host: Host, paths: RunPaths) -> list[Problem]:
    """--copy-storage creates each copied disk here: one already at its path would be written over, or be
    the source's own file on shared storage. Only a file this VM's guest left here by moving away, unchanged
    since, is not in the way: it is replaced."""
    copied = {mirror.node for mirror in mirrors_of(spec)}
    return [Problem(f"disks[{index}]", f"{disk.path} already exists on the destination; --copy-storage creates it",
                    hint="remove it there, or migrate without --copy-storage if it is the same shared file")
            for index, disk in enumerate(spec.disks)
            if disk.id in copied and host.exists(str(disk.path)) and not is_left(host, paths, str(disk.path))]


def _replace_left(spec: Spec, host: Host, paths: RunPaths, say: Say) -> None:
    """The files the guest left here by moving away (as _present found them) go: the preflight creates its
    copies in their place."""
    for path in _paths_of(spec, mirrors_of(spec)):
        if is_left(host, paths, path):
            crash_point(f"before removing {path}, left by the guest")
            host.remove_file(path)
            forget_left(paths, [path])
            say(f"{path}: removed the copy the guest left here by moving away; its disk comes back in its place")


def _arrived(monitor: MigrationMonitor) -> bool:
    """The source went away: the guest is ours if its migration got here, or is still coming (the source's
    qemu goes on sending without its vmrun); nobody else runs it then."""
    while True:
        if monitor.status() == "running":
            return True
        # qemu says "completed" a moment before it starts the guest: that guest is ours, to wait for.
        if (status := monitor.progress().status) != "active":
            return status == "completed"
        time.sleep(POLL)


def _wait_running(monitor: MigrationMonitor) -> None:
    deadline = time.monotonic() + CONFIRM_TIMEOUT
    while (status := monitor.status()) != "running":
        if time.monotonic() >= deadline:
            raise LaunchError(f"the guest is {status!r} here {CONFIRM_TIMEOUT:g} s after the switch-over")
        time.sleep(POLL)


def _write(outgoing: IO[str], message: dict[str, Any]) -> None:
    outgoing.write(json.dumps(message) + "\n")
    outgoing.flush()
