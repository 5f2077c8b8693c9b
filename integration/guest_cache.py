"""What vmrun's test-guest builders share: Debian package versions from apt, and a cache keyed by them.

A builder names the packages it would fetch; their candidate versions and the bytes of its recipe
make the key of a directory under ${XDG_CACHE_HOME:-~/.cache}/vmrun/NAME/. Builds happen in a
temporary directory beside it and are renamed into place, and images/NAME/ in the repository
links to the entry. Python stdlib only: it runs before the project's environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
Versions = dict[str, str]


class PackageNotFound(Exception):
    """apt does not know a package, or cannot fetch the version its lists name: stale lists."""


def run(*argv: str, cwd: Path | None = None) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stdout


def vmrun_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmrun"


def apt_cache(*args: str) -> str:
    # Debian's container images switch apt's binary cache off, which makes every apt-cache call
    # reparse all package lists (~1 s); keeping our own copy makes a cached build take well under 1 s.
    directory = vmrun_cache() / "apt"
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return run("apt-cache", "-o", f"Dir::Cache::pkgcache={directory / 'pkgcache.bin'}", *args)
    except subprocess.CalledProcessError as error:  # "E: No packages found"
        raise PackageNotFound(error.stderr.strip()) from None


def kernel_package(metapackage: str) -> str:
    """The bookworm kernel package a metapackage (linux-image-amd64, ...) points to."""
    depends = apt_cache("depends", metapackage)
    match = re.search(r"Depends: (linux-image-6\.1\.[\d.]*-\d+-[\w-]+)\b", depends)
    if not match:
        raise PackageNotFound(f"no linux-image-6.1.* among what {metapackage} depends on")
    return match.group(1)


def candidate_versions(packages: list[str]) -> Versions:
    """What apt would fetch now for each package, found without downloading anything."""
    versions: dict[str, str | None] = {}
    package = None
    for line in apt_cache("policy", *packages).splitlines():
        if not line.startswith(" ") and line.endswith(":"):
            package = line[:-1]
        elif package and line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            versions[package] = None if version == "(none)" else version
    missing = [package for package in packages if versions.get(package) is None]
    if missing:
        raise PackageNotFound(f"no candidate version for {', '.join(missing)}")
    return {package: str(versions[package]) for package in packages}


def apt_lists_empty() -> bool:
    return not any(Path("/var/lib/apt/lists").glob("*_Packages*"))


@dataclass(frozen=True)
class GuestCache:
    name: str  # the cache's and images/'s subdirectory, and the prefix of messages
    recipe: tuple[Path, ...]  # files whose bytes, with this module's, go into the key
    product: str  # the file a complete entry has; the one whose path is printed
    linked: tuple[str, ...]  # the files images/NAME/ links to

    def say(self, message: str) -> None:
        print(f"{self.name}-guest: {message}", file=sys.stderr, flush=True)

    def key(self, versions: Versions) -> str:
        recipe = [path.read_bytes() for path in (*self.recipe, Path(__file__))]
        digest = hashlib.sha256(repr((sorted(versions.items()), recipe)).encode())
        return digest.hexdigest()[:16]

    def apt_update(self) -> None:
        self.say("apt-get update")
        run("apt-get", "update", "-qq")

    def put_in_place(self, output: Path, destination: Path) -> None:
        """Rename: a cache entry is whole or absent, even with builds racing."""
        old = destination.with_name(destination.name + ".old")
        if destination.exists():  # --force: swap, so the entry is missing only between two renames
            shutil.rmtree(old, ignore_errors=True)
            destination.rename(old)
        try:
            output.rename(destination)
        except OSError:
            if not (destination / self.product).exists():
                raise  # anything but another build having finished first
        shutil.rmtree(old, ignore_errors=True)

    def link(self, cached: Path) -> Path:
        """images/NAME/* -> the cache, each link replaced atomically (a test may be reading it)."""
        links = REPO / "images" / self.name
        links.mkdir(parents=True, exist_ok=True)
        for name in self.linked:
            temporary = links / f".{name}.new"
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(cached / name)
            temporary.replace(links / name)
        return links / self.product

    def resolve(
        self, versions: Callable[[], Versions], build: Callable[[Versions, Path], None], force: bool, print_only: bool,
    ) -> Path:
        """The cache entry for the current package versions, built unless print_only.

        build(versions, work) leaves the entry's files in work/output, in a temporary directory
        that goes afterwards. Stale or missing package lists show as PackageNotFound, from
        apt-cache or from the download: then apt-get update, once, and start over.
        """
        updated = apt_lists_empty()  # a fresh machine or container has no package lists yet
        if updated:
            self.apt_update()
        while True:
            try:
                current = versions()
                cached = vmrun_cache() / self.name / self.key(current)
                if print_only:
                    return cached
                if (cached / self.product).exists() and not force:
                    self.say(f"cached: {cached}")
                    return cached
                started = time.monotonic()
                cached.parent.mkdir(parents=True, exist_ok=True)
                # In the cache directory, so the final rename stays on one file system.
                with tempfile.TemporaryDirectory(prefix=".build-", dir=cached.parent) as temporary:
                    work = Path(temporary)
                    (work / "output").mkdir()
                    build(current, work)
                    (work / "output" / "versions.txt").write_text("".join(f"{p} {v}\n" for p, v in current.items()))
                    self.put_in_place(work / "output", cached)
            except PackageNotFound as error:
                if updated:
                    raise SystemExit(f"{self.name}-guest: {error}") from None
                first_line = (str(error).splitlines() or ["apt could not find a package"])[0]
                self.say(f"{first_line}; updating the package lists")
                self.apt_update()
                updated = True
                continue
            size = (cached / self.product).stat().st_size / 2**20
            self.say(f"built {cached} in {time.monotonic() - started:.1f} s ({self.product} {size:.1f} MiB)")
            return cached

    def main(self, description: str, versions: Callable[[], Versions], build: Callable[[Versions, Path], None]) -> None:
        """--print prints the cache directory; otherwise build if needed and print the product's link."""
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--force", action="store_true", help="rebuild even when cached")
        parser.add_argument("--print", action="store_true", help="print the cache directory and exit")
        args = parser.parse_args()
        if args.print:
            print(self.resolve(versions, build, force=False, print_only=True))
            return
        print(self.link(self.resolve(versions, build, args.force, print_only=False)))
