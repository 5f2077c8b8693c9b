"""Which host CPUs each of a paused qemu's threads gets before the guest runs."""

from __future__ import annotations

from vmrun.qemu.pinning import thread_pins
from vmrun.spec.model import Machine


def test_vcpus_get_their_pin_and_every_other_thread_the_emulator_pin() -> None:
    machine = Machine(cpus=2, vcpu_pin=(3, 2), emulator_pin=(0, 1))
    assert thread_pins(machine, {0: 11, 1: 12}, [10, 11, 12, 13]) == {
        10: {0, 1}, 11: {3}, 12: {2}, 13: {0, 1}}


def test_without_emulator_pin_qemu_other_threads_are_left_alone() -> None:
    assert thread_pins(Machine(cpus=1, vcpu_pin=(1,)), {0: 11}, [10, 11]) == {11: {1}}
    assert thread_pins(Machine(cpus=1, emulator_pin=(0,)), {0: 11}, [10, 11]) == {10: {0}}
