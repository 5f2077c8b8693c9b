"""TOML file -> Spec, with every structural mistake reported at its path.

One cattrs converter, strict about types: TOML's ``"2048"`` is not an int, ``1`` is
not a bool, and a key the model does not know is an error with a near-miss hint.
"""

from __future__ import annotations

import enum
import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Any, TypeVar, Union, get_args, get_origin, get_type_hints

import attrs
import cattrs
import rtoml  # a compiled parser: a spec in ~15 us, where tomli's compiled build takes ~60 and tomllib ~140
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from vmrun.errors import Problem, SpecError, UsageError
from vmrun.record import Record
from vmrun.spec.images import is_url
from vmrun.spec.model import (
    Accel,
    Aio,
    ByteSize,
    Cache,
    DiskFormat,
    Firmware,
    HugePages,
    ImageUrl,
    NicMode,
    RunStrategy,
    Seconds,
    SecurityModel,
    Spec,
    Vhost,
)
from vmrun.spec.naming import pci_address, with_derived_names
from vmrun.units import format_duration, format_size, parse_duration, parse_size

if TYPE_CHECKING:
    from attrs import AttrsInstance

_Parsed = TypeVar("_Parsed")
_Instance = TypeVar("_Instance", bound="AttrsInstance")
_TOML_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
}


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


class BadValue(ValueError):
    """A value that cannot be what its key needs: the user's mistake, reported at its path (exit 2).
    Any other exception while structuring is a bug in vmrun (exit 1), and fuzzing can tell."""


def describe(value: object) -> str:
    for python_type, name in _TOML_TYPE_NAMES.items():
        if isinstance(value, python_type):
            return f"{name} ({value!r})" if python_type in (bool, int, float, str) else name
    return type(value).__name__


def _expect(value: object, *types: type, what: str) -> None:
    # bool is an int in Python but never in a spec.
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise BadValue(f"expected {what}, got {describe(value)}")


def _structure_str(value: object, _: type) -> str:
    if type(value) is not str:  # what TOML gives; the general check only when it is not
        _expect(value, str, what="a string")
    assert isinstance(value, str)
    bad = _CONTROL_CHARACTER.search(value)
    if bad is not None:
        raise BadValue(f"control character {bad.group()!r} is not allowed")
    return value


def _structure_int(value: object, _: type) -> int:
    _expect(value, int, what="an integer")
    assert isinstance(value, int)
    return value


def _structure_bool(value: object, _: type) -> bool:
    _expect(value, bool, what="a boolean (true or false)")
    assert isinstance(value, bool)
    return value


def _structure_path(value: object, _: type) -> Path:
    text = _structure_str(value, str)
    if not text:
        raise BadValue("path must not be empty")
    return Path(text)


def _structure_base(value: object, _: type) -> Path | ImageUrl:
    """A disk's base: a URL to download (its scheme is checked with the rest of the spec) or a path."""
    text = _structure_str(value, str)
    return ImageUrl(text) if is_url(text) else _structure_path(text, Path)


def _structure_size(value: object, _: type) -> int:
    _expect(value, int, str, what='a size such as "8G" or a number of MiB')
    assert isinstance(value, int | str)
    return _parsed(parse_size, value)


def _structure_duration(value: object, _: type) -> float:
    _expect(value, int, float, str, what='a duration such as "30s"')
    assert isinstance(value, int | float | str)
    return _parsed(parse_duration, value)


def _parsed(parse: Callable[[Any], _Parsed], value: object) -> _Parsed:
    """A unit parser's refusal is the user's mistake."""
    try:
        return parse(value)
    except ValueError as exc:
        raise BadValue(str(exc)) from None


def _structure_vhost(value: object, _: type) -> Vhost:
    if isinstance(value, bool):
        return Vhost.ON if value else Vhost.OFF
    if value == "auto":
        return Vhost.AUTO
    raise BadValue(f'must be true, false or "auto", got {describe(value)}')


def _enum_hook(enum_type: type[enum.StrEnum]) -> Callable[[object, type], enum.StrEnum]:
    members = {member.value: member for member in enum_type}  # a lookup, not the enum's slower call
    choices = ", ".join(members)

    def structure(value: object, _: type) -> enum.StrEnum:
        member = members.get(value) if isinstance(value, str) else None
        if member is None:
            raise BadValue(f"must be one of {choices}, got {value!r}")
        return member

    return structure


def _is_homogeneous_tuple(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def _structured_items(
    entries: Iterable[tuple[str | int, Any]], structure_item: Callable[[Any, Any], Any], item_type: Any,
    container_type: Any,
) -> list[Any]:
    """Each entry of an array (by index) or a table (by key) structured, the user's mistakes collected with
    where they are and raised together."""
    items, errors = [], []
    for where, item in entries:
        try:
            items.append(structure_item(item, item_type))
        except (BaseValidationError, BadValue) as exc:
            exc.add_note(IterableValidationNote(f"@ {where!r}", where, item_type))
            errors.append(exc)
    if errors:
        raise IterableValidationError(f"invalid entries of {container_type}", errors, container_type)
    return items


def _array_hook(converter: cattrs.Converter, type_: Any) -> Callable[[object, type], tuple[Any, ...]]:
    item_type = get_args(type_)[0]
    structure_item = converter.get_structure_hook(item_type)

    def structure(value: object, _: type) -> tuple[Any, ...]:
        # Without this, cattrs would happily iterate a table's keys or a string's letters.
        _expect(value, list, what="an array")
        assert isinstance(value, list)
        return tuple(_structured_items(enumerate(value), structure_item, item_type, type_))

    return structure


def _is_optional(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) in (Union, UnionType) and len(args) == 2 and NoneType in args


def _optional_hook(converter: cattrs.Converter, type_: Any) -> Callable[[object, type], Any]:
    """``X | None``: X's hook, found once. cattrs' own looks it up again for every value."""
    (inner_type,) = (arg for arg in get_args(type_) if arg is not NoneType)
    structure_inner = converter.get_structure_hook(inner_type)

    def structure(value: object, _: type) -> Any:
        return None if value is None else structure_inner(value, inner_type)

    return structure


def _is_dict(type_: Any) -> bool:
    return get_origin(type_) is dict


def _dict_hook(converter: cattrs.Converter, type_: Any) -> Callable[[object, type], dict[Any, Any]]:
    """A table into a dict, value by value. Not cattrs' generated mapping function: compiling one per table type
    costs every `validate` and `render` ~0.5 ms."""
    key_type, value_type = get_args(type_)
    structure_key, structure_value = converter.get_structure_hook(key_type), converter.get_structure_hook(value_type)

    def structure_entry(entry: tuple[object, object], _: Any) -> tuple[Any, Any]:
        key, item = entry
        return structure_key(key, key_type), structure_value(item, value_type)

    def structure(value: object, _: type) -> dict[Any, Any]:
        # cattrs' own mapping hook would fail on an array with "'list' object has no attribute 'items'".
        _expect(value, dict, what="a table")
        assert isinstance(value, dict)
        entries = ((key, (key, item)) for key, item in value.items())  # each at its key, the key checked too
        return dict(_structured_items(entries, structure_entry, value_type, type_))

    return structure


def _table_hook(converter: cattrs.Converter, cls: type) -> Callable[[object, type], Any]:
    """A table into an attrs class, key by key: each mistake noted with its key, unknown keys refused,
    all of them raised together in the order of the class's fields, as cattrs' generated structure
    functions do. Nothing is generated: compiling a function per class costs more (~0.5 ms each, paid by
    every `validate` and `render`) than structuring a spec through a loop ever does."""
    types = get_type_hints(cls)  # the spec's annotations are strings
    fields = {
        field.name: (order, types[field.name], converter.get_structure_hook(types[field.name]),
                     AttributeValidationNote(f"Structuring class {cls.__name__} @ attribute {field.name}",
                                             field.name, types[field.name]))
        for order, field in enumerate(attrs.fields(cls))
    }
    required = [field.name for field in attrs.fields(cls) if field.default is attrs.NOTHING]

    def structure(value: object, _type: type) -> Any:
        if type(value) is not dict:  # what TOML gives; the general check only when it is not
            _expect(value, dict, what="a table")
        assert isinstance(value, dict)
        values: dict[str, Any] = {}
        errors: list[tuple[int, Exception]] = []
        unknown = set()  # gathered on the way: a set difference per table costs every spec ~4 us
        for name, item in value.items():  # a table names a few of its class's fields: walk the table
            field = fields.get(name)
            if field is None:
                unknown.add(name)
                continue
            order, field_type, structure_field, note = field
            try:
                values[name] = structure_field(item, field_type)
            except (BaseValidationError, BadValue) as exc:  # the user's mistakes, collected with their key
                exc.add_note(note)
                errors.append((order, exc))
        for name in required:
            if name not in value:
                missing = KeyError(name)  # as cattrs reports a required key the table lacks
                order, _, _, note = fields[name]
                missing.add_note(note)
                errors.append((order, missing))
        if unknown:
            errors.append((len(fields), ForbiddenExtraKeysError("", cls, unknown)))
        if errors:
            raise ClassValidationError(f"While structuring {cls.__name__}",
                                       [error for _, error in sorted(errors, key=lambda entry: entry[0])], cls)
        return cls(**values)

    return structure


def _table_unstructure_hook(converter: cattrs.Converter, cls: type) -> Callable[[Any], dict[str, Any]]:
    """An attrs instance as a table, each field through the hook of its declared type and left out when it
    equals its default, as cattrs' generated functions do with omit_if_default; nothing is generated
    (see _table_hook)."""
    types = get_type_hints(cls)
    fields = [(field.name, _default_of(field), converter.get_unstructure_hook(types[field.name]))
              for field in attrs.fields(cls)]

    def unstructure(instance: Any) -> dict[str, Any]:
        table = {}
        for name, default, hook in fields:
            value = getattr(instance, name)
            if default is None or value != default():
                table[name] = hook(value)
        return table

    return unstructure


def _default_of(field: attrs.Attribute[Any]) -> Callable[[], Any] | None:
    """What makes the field's default (a factory is called afresh, as attrs does); None: it has none."""
    default = field.default
    if default is attrs.NOTHING:
        return None
    factory: Callable[[], Any] | None = getattr(default, "factory", None)  # an attrs.Factory
    return factory or (lambda: default)


def _unstructure_hooks(converter: cattrs.Converter) -> None:
    """Write sizes and durations back the way people write them."""
    converter.register_unstructure_hook_factory(attrs.has, lambda cls: _table_unstructure_hook(converter, cls))
    converter.register_unstructure_hook(ByteSize, format_size)
    converter.register_unstructure_hook(Seconds, format_duration)
    converter.register_unstructure_hook(Path, str)
    converter.register_unstructure_hook(
        Vhost, lambda vhost: {Vhost.ON: True, Vhost.OFF: False}.get(vhost, str(vhost))
    )


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, omit_if_default=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(Path, _structure_path)
    converter.register_structure_hook(ByteSize, _structure_size)
    # Registered first: the hook of a particular optional type, registered after it, takes precedence.
    converter.register_structure_hook_factory(_is_optional, lambda t: _optional_hook(converter, t))
    converter.register_structure_hook(Path | ImageUrl | None, _structure_base)
    converter.register_structure_hook(Seconds, _structure_duration)
    # Class hooks, one per enum: the str hook above would otherwise catch every StrEnum.
    for choice in (Accel, HugePages, Firmware, DiskFormat, Cache, Aio, SecurityModel, RunStrategy, NicMode):
        converter.register_structure_hook(choice, _enum_hook(choice))
    converter.register_structure_hook(Vhost, _structure_vhost)
    converter.register_structure_hook_factory(_is_homogeneous_tuple, lambda t: _array_hook(converter, t))
    converter.register_structure_hook_factory(attrs.has, lambda t: _table_hook(converter, t))
    converter.register_structure_hook_factory(_is_dict, lambda t: _dict_hook(converter, t))
    _unstructure_hooks(converter)
    return converter


converter = make_converter()
# The type of each top-level section, resolved once (the spec's annotations are strings).
_SECTION_TYPES: dict[str, Any] = get_type_hints(Spec)


@functools.cache
def _section_hook(name: str) -> tuple[Any, Callable[[object, Any], Any]]:
    """The type of a top-level section and its structure hook, looked up once per section a spec has."""
    section_type = _SECTION_TYPES[name]
    return section_type, converter.get_structure_hook(section_type)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _join(path: str, step: str | int) -> str:
    if isinstance(step, int):
        return f"{path}[{step}]"
    if not _BARE_KEY.fullmatch(step):
        return f"{path}[{step!r}]"  # a key with odd characters, quoted as TOML would need it
    return f"{path}.{step}" if path else step


def _unknown_key_problems(cls: type, extra_keys: Iterable[str], path: str) -> Iterator[Problem]:
    known = [field.name for field in attrs.fields(cls)]
    for key in sorted(extra_keys):
        import difflib  # only when there is a mistake to explain

        near = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(known)}"
        yield Problem(_join(path, key), "unknown key", hint)


def _problems(exc: BaseException, path: str = "") -> Iterator[Problem]:
    """The user's mistakes among what cattrs collected; anything else is a bug in vmrun, raised again."""
    if isinstance(exc, ForbiddenExtraKeysError):
        yield from _unknown_key_problems(exc.cl, exc.extra_fields, path)
    elif isinstance(exc, BaseValidationError):
        for child in exc.exceptions:
            yield from _problems(child, _child_path(child, path))
    elif _is_missing_key(exc):
        yield Problem(path, "required key is missing")
    elif isinstance(exc, BadValue):
        yield Problem(path, str(exc))
    else:
        raise exc


def _is_missing_key(exc: BaseException) -> bool:
    """cattrs' KeyError for a required key the table lacks: the key it names is the attribute's own."""
    return isinstance(exc, KeyError) and any(
        isinstance(note, AttributeValidationNote) and exc.args == (note.name,)
        for note in getattr(exc, "__notes__", ())
    )


def _child_path(child: BaseException, path: str) -> str:
    for note in getattr(child, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            return _join(path, note.name)
        if isinstance(note, IterableValidationNote):
            return _join(path, note.index)
    return path


def _resolve(path: Path, base: Path) -> Path:
    # normpath, not resolve(): "../images/x" reads better without "..", and symlinks stay as written.
    resolved = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    return path if resolved == str(path) else Path(resolved)  # the same object: _changed sees nothing to do


def _resolve_optional(path: Path | None, base: Path) -> Path | None:
    return None if path is None else _resolve(path, base)


def _changed(instance: _Instance, **values: Any) -> _Instance:
    """attrs.evolve, skipped when every value is the one the instance has (most specs' paths are absolute
    already): copying a frozen instance costs more than checking it."""
    for name, value in values.items():  # a loop, not all() over a generator: normalize makes ~10 calls a spec
        current = getattr(instance, name)
        if current is not value and current != value:
            return attrs.evolve(instance, **values)  # type: ignore[misc]  # mypy's attrs plugin wants a concrete class
    return instance


def normalize(spec: Spec, base: Path) -> Spec:
    """Relative paths are relative to the spec file's directory; PCI addresses get their domain; every NIC gets
    its tap and MAC."""
    return _changed(
        with_derived_names(spec),
        boot=_changed(
            spec.boot,
            kernel=_resolve_optional(spec.boot.kernel, base),
            initrd=_resolve_optional(spec.boot.initrd, base),
        ),
        disks=tuple(
            _changed(disk, path=_resolve(disk.path, base),
                     base=disk.base if isinstance(disk.base, ImageUrl) else _resolve_optional(disk.base, base))
            for disk in spec.disks
        ),
        shares=tuple(_changed(share, path=_resolve(share.path, base)) for share in spec.shares),
        vfio=tuple(_changed(vfio, host=pci_address(vfio.host) or vfio.host) for vfio in spec.vfio),
        cloud_init=spec.cloud_init and _changed(
            spec.cloud_init,
            user_data=_resolve(spec.cloud_init.user_data, base),
            network_config=_resolve_optional(spec.cloud_init.network_config, base),
        ),
    )


@attrs.frozen(repr=False)
class Structured(Record):
    """A spec structured section by section (top-level key by key), so one bad section does not hide the
    others from the semantic checks. A section that failed is left at its default and named in ``failed``."""

    spec: Spec
    problems: tuple[Problem, ...]
    failed: frozenset[str]


def structure_spec(data: dict[str, Any], *, base: Path) -> Structured:
    sections, problems, failed = {}, [], set()
    for field in attrs.fields(Spec):
        if field.name not in data:
            if field.default is attrs.NOTHING:
                problems.append(Problem(field.name, "required key is missing"))
                failed.add(field.name)
            continue
        try:
            section_type, structure_section = _section_hook(field.name)
            sections[field.name] = structure_section(data[field.name], section_type)
        except (BaseValidationError, BadValue) as exc:
            problems += _problems(exc, field.name)
            failed.add(field.name)
    if unknown := data.keys() - _SECTION_TYPES.keys():
        problems += _unknown_key_problems(Spec, unknown, "")
    # A name that failed is a placeholder; "name" in failed keeps the checks that read it from running.
    spec = Spec(**{"name": "", **sections})
    return Structured(normalize(spec, base), tuple(problems), frozenset(failed))


def parse_spec(data: dict[str, Any], *, source: str, base: Path) -> Spec:
    """Structure already-parsed TOML data; every structural mistake is collected into one SpecError."""
    structured = structure_spec(data, base=base)
    if structured.problems:
        raise SpecError(source, structured.problems)
    return structured.spec


def read_document(path: Path) -> dict[str, Any]:
    """The spec file's TOML document; a file that is missing, not text or not TOML is a SpecError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(str(path), [Problem("", f"cannot read spec: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [Problem("", "spec is not UTF-8 text")]) from exc
    try:
        return rtoml.loads(text)
    except rtoml.TomlParsingError as exc:
        raise SpecError(str(path), [Problem("", f"not valid TOML: {exc}")]) from exc


def load_spec(path: Path) -> Spec:
    return parse_spec(read_document(path), source=str(path), base=spec_base(path))


def spec_base(path: Path) -> Path:
    """Relative paths in a spec are relative to its directory: the real one, a symlinked spec's target's."""
    if path.is_symlink():
        return path.resolve().parent
    return _real_directory(os.path.dirname(os.path.abspath(path)))


@functools.cache  # the specs of a directory share it: resolved once per process (3 stat calls), not per spec
def _real_directory(directory: str) -> Path:
    return Path(directory).resolve()


def dump_spec(spec: Spec) -> str:
    import tomli_w  # writing TOML is rare; reading specs, the common case, needs none of it

    return tomli_w.dumps(converter.unstructure(spec))


def spec_files(arguments: Sequence[str]) -> list[Path]:
    """Each SPEC as given; each DIR as its *.toml files, sorted."""
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            # By name: the order of the paths themselves (one directory's), whose comparisons cost ~40 times more.
            found = sorted(path.glob("*.toml"), key=lambda spec: spec.name)
            if not found:
                raise UsageError(f"{path}: no *.toml specs in this directory")
            files += found
        else:
            files.append(path)
    return files
