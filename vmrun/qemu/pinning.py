"""Pinning a paused qemu's threads: each vCPU to its host CPU, the rest to emulator_pin, then `cont`.

qemu starts with -S (vmrun.qemu.render), so no vCPU has run a guest instruction before it is pinned.
Threads qemu starts later (its worker pools) inherit the affinity of the thread that starts them.
"""

from __future__ import annotations

import errno

from vmrun.errors import LaunchError
from vmrun.host.system import Host, format_cpu_list
from vmrun.qemu.monitor import Monitor
from vmrun.spec.model import Machine
from vmrun.state.locations import RunPaths

CONNECT_TIMEOUT = 10.0


def thread_pins(machine: Machine, vcpus: dict[int, int], threads: list[int]) -> dict[int, frozenset[int]]:
    """The CPUs each of qemu's threads must run on: vCPUs (index -> thread id) by vcpu_pin, every other
    thread by emulator_pin; a thread neither names is left as it is."""
    pins: dict[int, frozenset[int]] = {}
    if machine.emulator_pin is not None:
        pins.update((tid, frozenset(machine.emulator_pin)) for tid in threads if tid not in vcpus.values())
    if machine.vcpu_pin is not None:
        pins.update((tid, frozenset({machine.vcpu_pin[index]})) for index, tid in vcpus.items())
    return pins


def pin_and_start(machine: Machine, host: Host, paths: RunPaths, pid: int) -> dict[int, frozenset[int]]:
    """Pin every thread of the paused qemu, then start the guest; returns the pins set, by thread id."""
    with Monitor.connected(paths.qmp_socket, timeout=CONNECT_TIMEOUT) as monitor:
        pins = thread_pins(machine, monitor.vcpu_threads(), host.thread_ids(pid))
        for tid, cpus in pins.items():
            try:
                host.pin_thread(tid, cpus)
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    continue  # a helper thread that has ended meanwhile
                raise LaunchError(f"cannot pin qemu thread {tid} to host CPUs {format_cpu_list(cpus)}: "
                                  f"{exc.strerror or exc}") from exc
        monitor.cont()
    return pins
