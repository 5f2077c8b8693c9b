"""What the other running vmrun VMs hold, read from their state files: what one VM's preflight must leave
them and its `down` must not take from them."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from vmrun.record import Record


@attrs.frozen(repr=False)
class Others(Record):
    """What the other running vmrun VMs hold, read from their state files by the caller."""

    writable_disks: frozenset[str] = frozenset()
    taps: Mapping[str, str] = attrs.field(factory=dict)  # tap -> the VM that uses it
    vfio: Mapping[str, str] = attrs.field(factory=dict)  # PCI function -> the VM that passes it
    want_ksm: bool = False
    ksm_previous: str | None = None  # the KSM run value one of them restores when it goes down last
    hugepages: Mapping[str, int] = attrs.field(factory=dict)  # pool's nr_hugepages path -> pages they added
    ksm_keepers: tuple[str, ...] = ()  # the VMs that want KSM (or may: their state is damaged)


NO_OTHERS = Others()
