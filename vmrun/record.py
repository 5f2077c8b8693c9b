"""The base of vmrun's attrs classes: one ``__repr__`` shared by all of them.

attrs writes and compiles a ``__repr__`` for each class as its module is imported: ~0.1 ms a class, paid
by every command for each of vmrun's ~60 classes. This one reads the fields when a repr is asked for, and
gives the text attrs would: ``Disk(id='root', path=PosixPath('/x'), ...)``.
"""

from __future__ import annotations

import attrs


class Record:
    """Subclass it and decorate with ``@attrs.frozen(repr=False)`` (or ``define``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        fields = attrs.fields(type(self))  # type: ignore[arg-type]  # each subclass is an attrs class
        shown = (
            f"{field.name}={field.repr(value) if callable(field.repr) else repr(value)}"
            for field in fields
            if field.repr and (value := getattr(self, field.name, attrs.NOTHING)) is not attrs.NOTHING
        )
        return f"{type(self).__qualname__}({', '.join(shown)})"
