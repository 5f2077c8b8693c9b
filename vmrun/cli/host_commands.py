"""The commands about the host and its image cache: preflight, host iommu|check, image pull|list|rm."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vmrun.cli.common import (
    checked_image_url,
    checked_spec,
    error_json,
    host_of,
    on_cached_bases,
    places_of,
    print_json,
    report,
    say,
    spec_checker,
)
from vmrun.errors import UsageError
from vmrun.units import iso_time

if TYPE_CHECKING:
    from vmrun.spec.images import Digest


def cmd_preflight(args: argparse.Namespace) -> int:
    from vmrun.host.facts import gather_facts
    from vmrun.preflight.plan import Plan, plan_preflight, refuse
    from vmrun.run.ending import others_than
    from vmrun.run.lifecycle import prepare

    spec = checked_spec(args.spec, args)
    host, places = host_of(args), places_of(args)

    def show(plan: Plan) -> None:
        print(json.dumps(plan.to_json(), indent=1) if args.json else plan.to_text(), flush=True)

    if args.dry_run:
        facts = gather_facts(host, spec.qemu.binary)
        plan = plan_preflight(on_cached_bases(spec, places), host, facts,
                              others=others_than(host, places, spec.name), run_dir=places.of(spec.name).run_dir)
        show(plan)
        refuse(plan)
        return 0
    applied = prepare(spec, Path(args.spec).resolve(), host, places, show=show, say=say)
    say(f"applied {len(applied)} change(s); `vmrun down {spec.name}` undoes them")
    return 0


def cmd_host_iommu(args: argparse.Namespace) -> int:
    import attrs

    from vmrun.preflight.report import iommu_report, iommu_text

    groups = iommu_report(host_of(args))
    print(json.dumps([attrs.asdict(group) for group in groups], indent=1) if args.json else iommu_text(groups))
    return 0


def cmd_host_check(args: argparse.Namespace) -> int:
    from vmrun.host.facts import probe_qemu
    from vmrun.preflight.report import host_report, report_text

    host = host_of(args)
    report = host_report(host, probe_qemu(host, "qemu-system-x86_64", asked_to_run=False))
    print(json.dumps(report, indent=1) if args.json else report_text(report))
    return 0


def cmd_image_pull(args: argparse.Namespace) -> int:
    from vmrun.run.imagecache import ImageCache, bases_in_use
    from vmrun.spec.images import is_url, parse_digest, url_bases

    cache = ImageCache(places_of(args).image_cache)
    if is_url(args.source):
        digest = parse_digest(checked_image_url(args.source, args.digest))
        assert digest is not None
        with cache.using(args.source, digest, say) as path:
            pulled = [{"url": args.source, "digest": str(digest), "path": str(path)}]
    else:
        if args.digest:
            raise UsageError("--digest goes with a URL; a spec names its digests itself")
        spec = checked_spec(args.source, args)
        if not url_bases(spec):
            say(f"{args.source}: no disk has a base given by URL; nothing to fetch")
        with bases_in_use(spec, cache, say):
            pass
        pulled = [{"url": found.url, "digest": str(found.digest), "path": str(cache.path_of(found.digest)),
                   "name": spec.name, "spec": args.source} for found in url_bases(spec)]
    if args.json:
        print_json(pulled)
    else:
        for image in pulled:
            print(image["path"])
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    from vmrun.run.imagecache import ImageCache, image_users
    from vmrun.units import format_age, format_bytes

    places = places_of(args)
    images = ImageCache(places.image_cache).images()
    users = image_users(places)
    rows = [{"digest": str(image.digest), "path": str(image.path), "size": image.size, "url": image.url,
             "fetched": iso_time(image.fetched), "used_by": users.of(image.digest),
             "last_used": iso_time(image.last_used) if image.last_used is not None else None} for image in images]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        say(f"no images in {places.image_cache}")
    now = time.time()
    for image in images:
        used = ", ".join(users.of(image.digest)) or "unused"
        last = f"last used {format_age(now - image.last_used)} ago" if image.last_used is not None else "never used"
        when = f"fetched {format_age(now - image.fetched)} ago, {last}"
        print(f"{str(image.digest)[:19]}…  {format_bytes(image.size):>10}  {when:<36}  {used:<16}  {image.url or '?'}")
    for name in users.unknown:
        say(f"{name}: its state file is damaged, so which images it uses is unknown")
    return 0


def _named_digest(text: str, cached: list[Digest]) -> Digest:
    """A whole digest, or the start of one cached image's (as docker takes an id): `image list` shows 12 hex
    digits and an ellipsis, which may come along when copied."""
    from vmrun.spec.images import DIGEST_LENGTHS, digest_problem, parse_digest

    whole = parse_digest(text)
    if whole is not None:
        return whole
    start = text.removesuffix("…").lower()
    algorithm, colon, hex_start = start.rpartition(":")
    if (colon and algorithm not in DIGEST_LENGTHS) or not hex_start or not set(hex_start) <= set(HEX_DIGITS):
        raise UsageError(digest_problem(text) or text, hint=LIST_HINT)
    matches = [digest for digest in cached
               if digest.hex.startswith(hex_start) and algorithm in ("", digest.algorithm)]
    if not matches:
        raise UsageError(f"no cached image's digest starts with {text}", hint=LIST_HINT)
    if len(matches) > 1:
        raise UsageError(f"{text} is the start of {len(matches)} cached images' digests: "
                         f"{', '.join(map(str, matches))}", hint="give more of the digest")
    return matches[0]


HEX_DIGITS = "0123456789abcdef"
LIST_HINT = "vmrun image list shows the cached digests"


def cmd_image_rm(args: argparse.Namespace) -> int:
    from vmrun.run.imagecache import ImageCache
    from vmrun.run.imageprune import IN_USE_NOW, claimed, sweep

    places = places_of(args)
    cache = ImageCache(places.image_cache)
    if args.unused == bool(args.digests):
        raise UsageError("name the images to remove, or --unused", hint="vmrun image rm DIGEST... | --unused")
    if args.unused:
        swept = sweep(cache, places, say)
        if args.json:
            print_json({"removed": [str(digest) for digest in swept.removed],
                        "kept": [kept.to_json() for kept in swept.kept]})
        return 0
    cached = [image.digest for image in cache.images()]
    digests = list(dict.fromkeys(_named_digest(text, cached) for text in args.digests))  # one lock each
    missing = [digest for digest in digests if not cache.path_of(digest).is_file()]
    with claimed(cache, places, [digest for digest in digests if digest not in missing]) as (busy, users):
        if busy:
            raise UsageError(f"cannot remove {', '.join(map(str, busy))}: {IN_USE_NOW}",
                             hint="vmrun image list names the VM once it has started")
        for digest in digests:
            if users.of(digest):
                raise UsageError(f"{digest} is the base of {', '.join(users.of(digest))}",
                                 hint=f"vmrun down {' '.join(users.of(digest))} first")
        for digest in digests:
            if digest not in missing:
                cache.remove(digest)
                say(f"removed {digest}")
    if missing:
        raise UsageError(f"not in the image cache {places.image_cache}: {', '.join(map(str, missing))}")
    if args.json:
        print_json({"removed": [str(digest) for digest in digests], "kept": []})
    return 0


def cmd_image_prune(args: argparse.Namespace) -> int:
    from vmrun.errors import SpecError
    from vmrun.run.imagecache import ImageCache
    from vmrun.run.imageprune import sweep
    from vmrun.spec.images import named_digests
    from vmrun.spec.load import read_document, spec_files

    places = places_of(args)
    named: dict[Digest, list[str]] = {}
    invalid: list[dict[str, object]] = []
    # Every spec is read before anything goes: one that cannot be read may name any image.
    checked = spec_checker(args)
    for path in map(str, spec_files(args.dirs)):
        for digest in named_digests(read_document(Path(path))):
            named.setdefault(digest, []).append(path)
        try:
            checked(path)
        except SpecError as error:
            report(error)
            say(f"{path} is invalid: the images it names are kept")
            invalid.append({"spec": path, **error_json(error)})
    cache = ImageCache(places.image_cache)
    swept = sweep(cache, places, say, named)
    partial_files = cache.remove_leftovers()
    for partial in partial_files:
        say(f"removed {partial} (a download that did not finish)")
    if args.json:
        print_json({"removed": [str(digest) for digest in swept.removed],
                    "kept": [kept.to_json() for kept in swept.kept],
                    "partial_files": [str(partial) for partial in partial_files], "invalid": invalid})
    return 0
