"""The same VM for other tools: libvirt, systemd, KubeVirt, one module each. Pure: text in, text out.

Whatever a spec says that the target cannot express comes back as a note, never silently dropped.
"""

from __future__ import annotations

import attrs

from vmrun.record import Record


@attrs.frozen(repr=False)
class Export(Record):
    text: str
    notes: tuple[str, ...] = ()  # what the target cannot express
