"""The image cache: base images downloaded once, verified, shared by every VM that names them.

An image lands in the cache whole and verified or not at all: it is written to a temporary file beside its
place, hashed as it arrives, and renamed to its digest's name only when the digest matches. One lock per
digest makes concurrent `up`s that share an image download it once; an `up` holds it shared from finding the
image until its VM's state names the image, and `image rm` needs it exclusively, so it cannot pull an image
from under an `up` that is about to build on it. vmrun runs as root: a cached file is trusted, so the cache
must be writable by its owner alone, and names in it come from digests only.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from stat import S_ISREG
from typing import IO, Any

import attrs

from vmrun import __version__
from vmrun.errors import FetchError, PreflightError
from vmrun.files import open_to_read, write_whole
from vmrun.progress import Meter, Say
from vmrun.record import Record
from vmrun.spec.images import DIGEST_LENGTHS, Digest, named_digests, parse_digest, scheme_of, url_bases
from vmrun.spec.model import Spec
from vmrun.state.locations import Places
from vmrun.units import GIB, format_bytes

MAX_IMAGE_BYTES = 64 * GIB  # a sanity bound: cloud images are a few hundred MiB; a larger body is a wrong URL
CHUNK = 1 << 20
ATTEMPTS = 3  # a transfer that breaks off is resumed (Range) or restarted this many times in all
READ_TIMEOUT = 60.0  # seconds without a byte before a transfer counts as broken off
# A server that sends a byte now and then never trips READ_TIMEOUT but would hold `up` (and the image's lock)
# for ever: like curl's --speed-limit/--speed-time, a transfer that averages less than SPEED_FLOOR bytes/s
# over SPEED_WINDOW seconds is given up. A floor this low is no judgement on a slow link: 1 KiB/s would
# take days over a cloud image.
SPEED_FLOOR = 1024
SPEED_WINDOW = 60.0
_CACHED_NAME = re.compile(rf"({'|'.join(DIGEST_LENGTHS)})-([0-9a-f]+)")
_PARTIAL_NAME = re.compile(rf"\.({'|'.join(DIGEST_LENGTHS)})-([0-9a-f]+)\.[^/]*\.partial")  # see _download


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects (urllib's 301, 302, 303, 307, 308) but only to http and https: urllib's own would
    also follow one to ftp."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if scheme_of(newurl) not in ("http", "https"):
            raise FetchError(f"{req.full_url}: redirected to {newurl}; vmrun follows redirects to http and https only")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _RateFloor:
    """The bytes that arrived, sampled a few times per SPEED_WINDOW (so a fast transfer keeps few samples);
    a transfer whose average over the last SPEED_WINDOW seconds is below SPEED_FLOOR is refused. Restarts
    and retries count as time without bytes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.arrived = 0
        self.samples = deque([(time.monotonic(), 0)])

    def count(self, size: int) -> None:
        now = time.monotonic()
        self.arrived += size
        if now - self.samples[-1][0] >= SPEED_WINDOW / 16:
            self.samples.append((now, self.arrived))
        while len(self.samples) > 1 and self.samples[1][0] <= now - SPEED_WINDOW:
            self.samples.popleft()
        since, then = self.samples[0]
        if now - since >= SPEED_WINDOW and (rate := (self.arrived - then) / (now - since)) < SPEED_FLOOR:
            raise FetchError(f"{self.url}: the transfer averaged {format_bytes(int(rate))}/s over the last "
                             f"{now - since:.0f} s, below the {format_bytes(SPEED_FLOOR)}/s vmrun waits for; "
                             "nothing was kept", hint="the server or the link stalls: try again later, or a mirror")


class _Partial:
    """The temporary file a transfer writes, and the digest of what it holds so far."""

    def __init__(self, file: IO[bytes], url: str, digest: Digest, meter: Meter) -> None:
        self.file, self.url, self.digest, self.meter = file, url, digest, meter
        self.rate = _RateFloor(url)
        self.restart()

    def restart(self) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.hasher = hashlib.new(self.digest.algorithm)
        self.received = 0
        self.total: int | None = None

    def expect(self, total: int | None) -> None:
        """The size the server announces: within the bound, and room for it in the cache."""
        self.total = total
        if total is None:
            return
        if total > MAX_IMAGE_BYTES:
            raise FetchError(f"{self.url} is {format_bytes(total)}, more than the {format_bytes(MAX_IMAGE_BYTES)} "
                             "vmrun takes for an image")
        stats = os.fstatvfs(self.file.fileno())
        free = stats.f_bavail * stats.f_frsize
        if total - self.received > free:
            raise FetchError(f"{self.url}: {format_bytes(total)} does not fit in the cache "
                             f"({format_bytes(free)} free)", hint="free space, or point --cache-dir elsewhere")
        self.meter.show(self.received, total)

    def write(self, chunk: bytes) -> None:
        self.rate.count(len(chunk))
        if self.received + len(chunk) > MAX_IMAGE_BYTES:
            raise FetchError(f"{self.url} sends more than the {format_bytes(MAX_IMAGE_BYTES)} vmrun takes for an image")
        try:
            self.file.write(chunk)
        except OSError as exc:
            raise FetchError(f"{self.url}: cannot write to the cache: {exc.strerror}",
                             hint="free space, or point --cache-dir elsewhere") from None
        self.hasher.update(chunk)
        self.received += len(chunk)
        self.meter.show(self.received, self.total)

    def copy(self, read: Callable[[int], bytes]) -> None:
        while chunk := read(CHUNK):
            self.write(chunk)

    def verify(self) -> None:
        got = self.hasher.hexdigest()
        if got != self.digest.hex:
            raise FetchError(f"{self.url}: {self.digest.algorithm} digest mismatch: expected {self.digest.hex}, "
                             f"got {got}; nothing was kept",
                             hint="check the digest against the checksums published with the image")
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as exc:
            raise FetchError(f"{self.url}: cannot write to the cache: {exc.strerror}") from None


def _copy_local(url: str, partial: _Partial) -> None:
    path = urllib.request.url2pathname(url.split("://", 1)[1].removeprefix("localhost"))
    try:
        with open_to_read(path) as source:
            stat = os.fstat(source.fileno())
            if not S_ISREG(stat.st_mode):
                raise FetchError(f"{url}: {path} is not a regular file")
            partial.expect(stat.st_size)
            partial.copy(source.read)
    except OSError as exc:
        raise FetchError(f"{url}: cannot read {path}: {exc.strerror}") from None


def _copy_http(url: str, partial: _Partial) -> None:
    """GET url into partial; a transfer that breaks off goes on from where it stopped when the server takes a
    Range, else starts over, ATTEMPTS times in all."""
    opener = urllib.request.build_opener(_HttpRedirectsOnly)
    why = ""
    for _ in range(ATTEMPTS):
        headers = {"User-Agent": f"vmrun/{__version__}"}
        if partial.received:
            headers["Range"] = f"bytes={partial.received}-"
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=READ_TIMEOUT) as response:
                resumed = response.status == 206 and _range_start(response) == partial.received
                if partial.received and not resumed:
                    partial.restart()
                length = response.headers.get("Content-Length")
                partial.expect(partial.received + int(length) if length and length.isdigit() else None)
                partial.copy(response.read1)  # what arrives: read waits for a whole CHUNK, unmeasured
            if partial.total is None or partial.received == partial.total:
                return
            why = f"the transfer ended after {partial.received} of {partial.total} bytes"
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{url}: the server answered {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise FetchError(f"{url}: cannot reach it: {exc.reason}") from None
        except ValueError as exc:  # http.client.InvalidURL: a port that is no number, ...
            raise FetchError(f"{url}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:  # reset, timed out, a bad chunk: it broke off
            why = f"the transfer broke off after {partial.received} bytes: {exc}"
    raise FetchError(f"{url}: {why} ({ATTEMPTS} attempts)")


def _range_start(response: Any) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    return int(match[1]) if match else None


@attrs.frozen(repr=False)
class CachedImage(Record):
    digest: Digest
    path: Path
    size: int
    url: str | None  # where it came from, when its note is readable
    fetched: float  # when it was downloaded (the file's time)
    last_used: float | None  # when an `up` or `image pull` last handed it out; None: never since vmrun kept it


@attrs.frozen(repr=False)
class ImageCache(Record):
    root: Path

    def path_of(self, digest: Digest) -> Path:
        return self.root / digest.file_name

    def _note_of(self, digest: Digest) -> Path:
        return self.root / f"{digest.file_name}.json"

    def _stamp_of(self, digest: Digest) -> Path:
        """An empty file whose time is the image's last use: the image's own times are its download's."""
        return self.root / f"{digest.file_name}.used"

    def _stamp(self, digest: Digest) -> None:
        try:
            fd = os.open(self._stamp_of(digest), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError:
            return  # a record for `image list` only: no reason to refuse the image
        try:
            os.utime(fd)
        finally:
            os.close(fd)

    def _last_use(self, digest: Digest) -> float | None:
        try:
            return self._stamp_of(digest).lstat().st_mtime
        except FileNotFoundError:
            return None

    def _checked_root(self, *, create: bool) -> Path:
        """The cache is trusted: a file in it is booted as the image its name says. So it must be writable by
        its owner alone, and that owner vmrun's user (root for root)."""
        if create:
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        stat = self.root.stat()
        if stat.st_uid != os.geteuid() or stat.st_mode & 0o022:
            raise PreflightError(f"image cache {self.root} is writable by others than {_user_name()}: vmrun "
                                 "trusts the images it finds there", hint=f"chmod go-w {self.root}, or use another "
                                 "--cache-dir")
        return self.root

    @contextmanager
    def _lock(self, digest: Digest, say: Say | None, *, shared: bool = False) -> Iterator[bool]:
        """Whether it holds the image's lock: always, unless say is None (do not wait) and another holds it."""
        fd = self._acquire(digest, say, shared=shared)
        try:
            yield fd is not None
        finally:
            if fd is not None:
                self._release(digest, fd, shared=shared)

    def _lock_path(self, digest: Digest) -> Path:
        return self.root / f".{digest.file_name}.lock"

    def _acquire(self, digest: Digest, say: Say | None, *, shared: bool) -> int | None:
        """flock on a lock file per digest: its descriptor, or None when another holds it and say is None (do
        not wait). A lock counts only on the file its path names, so a holder that finds another file there
        (or none) once it has the lock takes it again; and only a holder that has the file to itself removes
        it (see _release), so the file stays at its path while anyone holds it, and a shared holder and an
        exclusive one never lock different files."""
        path = self._lock_path(digest)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        waited = False
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                except BlockingIOError:
                    if say is None:
                        os.close(fd)
                        return None
                    if not waited:
                        say(f"waiting for another vmrun that is fetching {digest}")
                        waited = True
                    fcntl.flock(fd, mode)
                held = _names(path, fd)
            except BaseException:
                os.close(fd)
                raise
            if held:
                return fd
            os.close(fd)

    def _release(self, digest: Digest, fd: int, *, shared: bool) -> None:
        """The lock file goes with its exclusive holder, or with the last shared one: one that can take it
        exclusively on leaving."""
        try:
            if (not shared or _alone(fd)) and _names(self._lock_path(digest), fd):
                os.unlink(self._lock_path(digest))
        finally:
            os.close(fd)

    @contextmanager
    def using(self, url: str, digest: Digest, say: Say) -> Iterator[Path]:
        """The image's file in the cache, downloaded and verified first unless it is there, and kept there
        until the with-block ends: `image rm` refuses an image whose lock is held shared."""
        target = self.path_of(digest)
        self._checked_root(create=True)
        meanwhile = f"{url}: another vmrun fetched it meanwhile"
        looked = _is_cached(target)
        while True:  # an `image rm` between the download and the shared lock: fetched again
            with self._lock(digest, say, shared=True):
                if _is_cached(target):
                    if not looked:
                        say(meanwhile)
                    self._stamp(digest)
                    yield target
                    return
            with self._lock(digest, say):
                if _is_cached(target):
                    say(meanwhile)
                else:
                    self._fetch(url, digest, target, say)
            looked = True

    def _fetch(self, url: str, digest: Digest, target: Path, say: Say) -> None:
        for stale in self.root.glob(f".{digest.file_name}.*.partial"):  # a killed vmrun's; we hold the lock
            stale.unlink()
        say(f"fetching {url}")
        started = time.monotonic()
        self._download(url, digest, target)
        say(f"fetched {url} ({format_bytes(target.stat().st_size)} in {time.monotonic() - started:.1f} s, "
            f"{digest.algorithm} verified) into {target}")

    def _download(self, url: str, digest: Digest, target: Path) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.root, prefix=f".{digest.file_name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "w+b") as file, Meter(url.rsplit("/", 1)[-1] or url) as meter:
                partial = _Partial(file, url, digest, meter)
                (_copy_local if scheme_of(url) == "file" else _copy_http)(url, partial)
                partial.verify()
            os.chmod(temporary, 0o444)  # a base is never written
            note = json.dumps({"url": url, "digest": str(digest)}) + "\n"
            write_whole(self._note_of(digest), lambda path: path.write_text(note))
            try:
                os.rename(temporary, target)
            except OSError as exc:
                raise FetchError(f"{url}: cannot put it in the cache at {target}: {exc.strerror}") from None
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            self._note_of(digest).unlink(missing_ok=True)
            raise

    def images(self) -> list[CachedImage]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            match = _CACHED_NAME.fullmatch(path.name)
            digest = parse_digest(f"{match[1]}:{match[2]}") if match else None
            if digest is None or not _is_cached(path):
                continue
            stat = path.stat()
            found.append(CachedImage(digest, path, stat.st_size, self._url_of(digest), stat.st_mtime,
                                     self._last_use(digest)))
        return found

    def _url_of(self, digest: Digest) -> str | None:
        try:
            url = json.loads(self._note_of(digest).read_text()).get("url")
        except (OSError, ValueError, AttributeError):
            return None
        return url if isinstance(url, str) else None

    def unused_now(self, digest: Digest) -> AbstractContextManager[bool]:
        """Whether no vmrun is using the cached image right now (its lock, taken exclusively without waiting);
        if so, none starts to until the with-block ends: the time to read which VMs use it and remove it."""
        self._checked_root(create=False)
        return self._lock(digest, None)

    def remove_leftovers(self) -> list[Path]:
        """Removes the .partial files of downloads that no vmrun is doing (a killed one's): a download holds
        its digest's lock from start to end, so a partial file whose lock is free is left over."""
        if not self.root.is_dir():
            return []
        removed = []
        for path in sorted(self.root.glob(".*.partial")):
            match = _PARTIAL_NAME.fullmatch(path.name)
            digest = parse_digest(f"{match[1]}:{match[2]}") if match else None
            if digest is None:
                continue
            with self.unused_now(digest) as free:
                if free:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def remove(self, digest: Digest) -> None:
        """Under unused_now."""
        self.path_of(digest).unlink(missing_ok=True)
        self._note_of(digest).unlink(missing_ok=True)
        self._stamp_of(digest).unlink(missing_ok=True)


def _names(path: Path, fd: int) -> bool:
    """Whether the lock file at path is the one fd holds."""
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _alone(fd: int) -> bool:
    """Whether a shared holder that is leaving was the last: it can take the lock exclusively."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_cached(path: Path) -> bool:
    """Only a regular file vmrun renamed there is a cached image: a link (or a FIFO) is no verified image,
    and a download replaces it."""
    try:
        return S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _user_name() -> str:
    return "root" if os.geteuid() == 0 else "you"


@contextmanager
def bases_in_use(spec: Spec, cache: ImageCache, say: Say) -> Iterator[None]:
    """Every URL base of the spec in the cache, verified, and kept there until the with-block ends: the
    host step before preflight makes overlays on them, and the VM's state names them once it is written.
    Said per disk, as the spec names it."""
    with ExitStack() as held:
        for found in url_bases(spec):
            try:
                held.enter_context(cache.using(found.url, found.digest, lambda line: say(f"{spec.name}: {line}")))
            except FetchError as exc:
                raise FetchError(f"{spec.name}: disks[{found.index}].base: {exc}", hint=exc.hint) from None
        yield


@attrs.frozen(repr=False)
class Users(Record):
    """Which VMs use which cached images: each VM with a run directory (running, or prepared by `vmrun
    preflight`) uses its spec's URL bases; what a VM with a damaged state file uses is unknown."""

    by_digest: dict[Digest, list[str]]
    unknown: list[str]

    def of(self, digest: Digest) -> list[str]:
        return self.by_digest.get(digest, [])


def image_users(places: Places) -> Users:
    from vmrun.state.glance import DamagedState, vm_names
    from vmrun.state.vmstate import read_state

    by_digest: dict[Digest, list[str]] = {}
    unknown = []
    for name in vm_names(places.run_root):
        try:
            state = read_state(places.of(name))
        except DamagedState:
            unknown.append(name)
            continue
        for digest in named_digests(state.spec or {}) if state is not None else []:
            by_digest.setdefault(digest, []).append(name)
    return Users(by_digest, unknown)
