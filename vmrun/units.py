"""Sizes and durations as people write them in specs ("8G", "120s") and back."""

from __future__ import annotations

import math
import re

KIB = 1024
MIB = KIB**2
GIB = KIB**3
TIB = KIB**4
_SIZE_UNITS = {"K": KIB, "M": MIB, "G": GIB, "T": TIB}
_SIZE = re.compile(r"(\d+)\s*([KMGT])(?:i?B)?", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)")


def parse_size(value: int | str) -> int:
    """Bytes from "8G" / "512M" (binary units); a bare number means MiB."""
    if isinstance(value, int):
        return value * MIB
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"expected a size such as 512M or 8G (units K M G T), got {value!r}")
    number, unit = match.groups()
    return int(number) * _SIZE_UNITS[unit.upper()]


def format_size(size: int) -> str:
    """The largest exact binary unit: 8589934592 -> "8G"."""
    for unit, factor in sorted(_SIZE_UNITS.items(), key=lambda item: -item[1]):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B" if size else "0M"


def format_bytes(size: int) -> str:
    """A size for people to read, rounded: 30000000 -> "28.6 MiB"."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


def parse_duration(value: int | float | str) -> float:
    """Seconds from "120s" / "2m" / "500ms"; a bare number means seconds."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(value.strip())
        if not match:
            raise ValueError(f"expected a duration such as 30s, 2m or 500ms, got {value!r}")
        number, unit = match.groups()
        seconds = float(number) * _DURATION_UNITS[unit]
    # TOML has nan and inf, and a long enough string of digits overflows to inf.
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def format_age(seconds: float) -> str:
    """How long ago, in the largest whole unit (45s, 12m, 3h, 5d): a listing's glance, not a measurement."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def iso_time(seconds: float) -> str:
    """A moment in --json output: ISO 8601 in UTC, to the second (2026-12-06T02:41:10+00:00)."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))
