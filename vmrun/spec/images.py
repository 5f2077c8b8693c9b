"""Base images named by URL: what a spec may say (checked by validate) and where the cache keeps them.

Pure: no I/O. `vmrun.run.imagecache` downloads; this module only names things. A cached image's name comes
from its digest alone, never from its URL, so a URL cannot steer vmrun (root) to another file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from vmrun.errors import Problem
from vmrun.record import Record
from vmrun.spec.model import Disk, ImageUrl, Spec

SCHEMES = ("https", "http", "file")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# The lengths of the hex digests each algorithm gives; the names are hashlib's.
DIGEST_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"(sha256|sha512):([0-9a-fA-F]+)")
DIGEST_FORM = '"sha256:<hex>" or "sha512:<hex>" (as sha256sum or SHA512SUMS give it)'


def is_url(text: str) -> bool:
    """Whether a spec's base names a URL rather than a path: it starts with a scheme and ://."""
    return _URL.match(text) is not None


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


@attrs.frozen(repr=False)
class Digest(Record):
    algorithm: str  # a hashlib name: sha256 or sha512
    hex: str  # lower case

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def file_name(self) -> str:
        """The cached image's name: from the digest only, so it has no '/' and no dot in front."""
        return f"{self.algorithm}-{self.hex}"


def parse_digest(text: str) -> Digest | None:
    """'sha256:<64 hex>' or 'sha512:<128 hex>'; None for anything else."""
    match = _DIGEST.fullmatch(text)
    if match is None or len(match[2]) != DIGEST_LENGTHS[match[1]]:
        return None
    return Digest(match[1], match[2].lower())


def digest_problem(text: str) -> str | None:
    """Why text is not a digest vmrun takes, or None."""
    if parse_digest(text) is not None:
        return None
    algorithm, _, hex_digits = text.partition(":")
    if algorithm not in DIGEST_LENGTHS:
        return f"{text!r} is not a digest: expected {DIGEST_FORM}"
    return f"a {algorithm} digest is {DIGEST_LENGTHS[algorithm]} hex digits, not {hex_digits!r}"


def url_problem(url: str) -> str | None:
    """Why a base URL is not one vmrun downloads, or None."""
    scheme = scheme_of(url)
    rest = url.split("://", 1)[1]
    if scheme not in SCHEMES:
        return f"{url}: scheme {scheme!r} is not supported; use https, http or file"
    if any(char.isspace() or not char.isprintable() for char in url):
        return f"{url!r}: a URL has no white space or control characters (write a space as %20)"
    if scheme == "file":
        if not rest.startswith("/") and not rest.startswith("localhost/"):
            return f"{url}: a file URL names an absolute path on this host (file:///path)"
    elif not rest or rest.startswith("/"):
        return f"{url}: names no host"
    return None


def check_image_bases(spec: Spec) -> Iterator[Problem]:
    """A URL base needs a digest vmrun can verify (vmrun runs as root: it boots nothing unverified)."""
    for index, disk in enumerate(spec.disks):
        path = f"disks[{index}]"
        if isinstance(disk.base, ImageUrl):
            problem = url_problem(disk.base)
            if problem is not None:
                yield Problem(f"{path}.base", problem)
            if disk.base_digest is None:
                yield Problem(f"{path}.base_digest", "required with a URL base: vmrun boots no image it has not "
                              "verified", f"set base_digest = {DIGEST_FORM}")
        if disk.base_digest is not None:
            problem = digest_problem(disk.base_digest)
            if problem is not None:
                yield Problem(f"{path}.base_digest", problem)
            elif not isinstance(disk.base, ImageUrl):
                yield Problem(f"{path}.base_digest", "only applies to a base given by URL",
                              "set base to an https://, http:// or file:// URL, or remove base_digest")


@attrs.frozen(repr=False)
class UrlBase(Record):
    """A disk whose base is downloaded: its index in the spec, its URL and the digest it must have."""

    index: int
    url: ImageUrl
    digest: Digest


def url_bases(spec: Spec) -> list[UrlBase]:
    """The spec's URL bases (a valid spec's, whose digests parse)."""
    found = []
    for index, disk in enumerate(spec.disks):
        digest = parse_digest(disk.base_digest or "")
        if isinstance(disk.base, ImageUrl) and digest is not None:
            found.append(UrlBase(index, disk.base, digest))
    return found


def named_digests(document: Mapping[str, Any]) -> list[Digest]:
    """The base digests a spec's document names (a spec file's TOML, or the spec a VM's state records), read
    without validating it: an invalid spec still names the images that fixing it would boot."""
    disks = document.get("disks")
    found = []
    for disk in disks if isinstance(disks, list) else []:
        digest = parse_digest(str(disk.get("base_digest", ""))) if isinstance(disk, Mapping) else None
        if digest is not None:
            found.append(digest)
    return found


def with_cached_bases(spec: Spec, cache_root: Path) -> Spec:
    """The spec as the host sees it: each URL base replaced by its file in the cache, which the overlay then
    names as its backing file. State and drift keep the spec itself (URL and digest)."""
    by_index = {found.index: cache_root / found.digest.file_name for found in url_bases(spec)}
    if not by_index:
        return spec
    disks: list[Disk] = [attrs.evolve(disk, base=by_index[index]) if index in by_index else disk
                         for index, disk in enumerate(spec.disks)]
    return attrs.evolve(spec, disks=tuple(disks))
