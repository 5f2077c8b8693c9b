"""Which cached images may go: `image rm` names them, `image rm --unused` and `image prune` sweep the cache.

An image goes only when no vmrun is using it right now (its lock, taken without waiting) and no VM with a run
directory uses it; `image prune` also keeps what the specs it is given name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager

import attrs

from vmrun.errors import UsageError
from vmrun.progress import Say
from vmrun.record import Record
from vmrun.run.imagecache import ImageCache, Users, image_users
from vmrun.spec.images import Digest
from vmrun.state.locations import Places

IN_USE_NOW = "a vmrun up (or preflight) is using it right now"


@attrs.frozen(repr=False)
class Kept(Record):
    digest: Digest
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"digest": str(self.digest), "reason": self.reason}


@attrs.frozen(repr=False)
class Swept(Record):
    removed: list[Digest]
    kept: list[Kept]


@contextmanager
def claimed(cache: ImageCache, places: Places, digests: Sequence[Digest]) -> Iterator[tuple[list[Digest], Users]]:
    """The digests that another vmrun is using now, and which VMs use which images, read while the others'
    locks are held: an `up` holds its images' locks from finding them until its state names them, so the
    states read under the locks name every image in use, and none starts to be used until the block ends.
    A VM whose state is damaged is refused: what it uses is unknown."""
    with ExitStack() as held:
        busy = [digest for digest in digests if not held.enter_context(cache.unused_now(digest))]
        users = image_users(places)
        if users.unknown:
            raise UsageError(f"which images {', '.join(users.unknown)} use is unknown (damaged state)",
                             hint="vmrun down --force them first")
        yield busy, users


def sweep(cache: ImageCache, places: Places, say: Say,
          named: Mapping[Digest, Sequence[str]] | None = None) -> Swept:
    """Removes every cached image that no vmrun is using now, no VM uses and no spec names (named: the specs
    that name each digest); says what it keeps and why."""
    digests = [image.digest for image in cache.images()]
    removed: list[Digest] = []
    kept: list[Kept] = []
    with claimed(cache, places, digests) as (busy, users):
        for digest in digests:
            reason = (IN_USE_NOW if digest in busy
                      else f"the base of {', '.join(users.of(digest))}" if users.of(digest)
                      else f"named by {', '.join(specs)}" if (specs := (named or {}).get(digest)) else None)
            if reason is None:
                cache.remove(digest)
                say(f"removed {digest}")
                removed.append(digest)
            else:
                say(f"kept {digest}: {reason}")
                kept.append(Kept(digest, reason))
    if not removed:
        say("no unused images")
    return Swept(removed, kept)
