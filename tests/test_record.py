"""Record's shared repr reads as the one attrs would have generated, so test failures and --debug output
show vmrun's values as before."""

from __future__ import annotations

from pathlib import Path

import attrs

from vmrun.record import Record
from vmrun.spec.load import load_spec

REPO = Path(__file__).resolve().parent.parent


@attrs.frozen
class GeneratedRepr:
    name: str
    sizes: tuple[int, ...] = ()
    secret: str = attrs.field(default="x", repr=False)
    shown: int = attrs.field(default=7, repr=lambda value: f"<{value}>")


@attrs.frozen(repr=False)
class SharedRepr(Record):
    name: str
    sizes: tuple[int, ...] = ()
    secret: str = attrs.field(default="x", repr=False)
    shown: int = attrs.field(default=7, repr=lambda value: f"<{value}>")


def test_the_shared_repr_reads_as_attrs_generated_one() -> None:
    generated, shared = repr(GeneratedRepr("db", (1, 2))), repr(SharedRepr("db", (1, 2)))
    assert shared.replace("SharedRepr", "GeneratedRepr") == generated
    assert shared == "SharedRepr(name='db', sizes=(1, 2), shown=<7>)"


def test_a_spec_repr_names_every_section_and_nested_value() -> None:
    spec = load_spec(REPO / "specs" / "db.toml")
    text = repr(spec)
    assert text.startswith("Spec(name='db', ")
    assert "Disk(id='root', path=PosixPath('/var/lib/vmrun/db/root.qcow2')" in text
    assert "Nic(id='net0'" in text and "queues=4" in text
