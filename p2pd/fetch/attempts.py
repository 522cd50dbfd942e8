"""The rules of a transfer, without I/O: its sources, its rounds, its failures.

As h11 keeps its rules apart from the ``Connection`` that does the I/O, this
module decides and ``p2pd.fetch.downloads`` acts (the states a transfer goes
through, and their moves, are ``p2pd.fetch.model``'s): nothing here opens a
socket or a file, sleeps or reads a clock, so every rule of docs/protocol.md
§5 (items 6, 7, 9 and 10) is tested without a network.
"""

from __future__ import annotations

import base64
import errno
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from p2pcommon.backoff import Backoff
from p2pcommon.paths import SHA256_PATTERN, UnsafePath, check_relpath
from p2pd.fetch.model import Queued

if TYPE_CHECKING:
    # Its class only (pydantic): the rules themselves load nothing that does I/O.
    from p2pcommon.models import Member

#: Rounds of attempts before a transfer fails (and keeps its partial file).
MAX_ATTEMPTS = 6
#: Full-jitter exponential backoff between rounds.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
#: A transfer that receives less than MIN_PROGRESS bytes in PROGRESS_WINDOW
#: seconds gives up on that member (a trickle holds a transfer slot forever).
PROGRESS_WINDOW = 60.0
MIN_PROGRESS = 64 * 1024
#: Answers that asking again cannot change: a 4xx other than these.  403 (not
#: a member) passes once the member's list catches up with the registry's.
RETRYABLE_4XX = frozenset({403, 404, 408, 429})
_SHA256 = re.compile(SHA256_PATTERN)
#: One for every transfer: seeding a Random from the OS cost ≈ 30 µs per transfer.
_JITTER = random.Random()

#: A member to ask, with its own path for the bytes.
Source: TypeAlias = "tuple[Member, str]"


class Retry(Exception):
    """This attempt failed; another (maybe from another member) may succeed.

    ``final``: the member refused in a way that asking again cannot change.
    """

    def __init__(self, reason: str, *, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


class Changed(Retry):
    """The member cannot give the listed bytes: it has others under that path now,
    or its answer does not say which bytes it sends (no usable Repr-Digest)."""


class Fatal(Exception):
    """The transfer cannot succeed; the message is the reason in the history.

    The partial file is removed unless ``keep_partial``: bytes of a member that
    only went away are worth keeping for the next fetch of the same content.
    """

    def __init__(self, reason: str, *, keep_partial: bool = False) -> None:
        super().__init__(reason)
        self.keep_partial = keep_partial


def is_final(status: int) -> bool:
    """A 4xx other than 403, 404, 408 and 429 will not change by asking again."""
    return 400 <= status < 500 and status not in RETRYABLE_4XX


def refused(status: int, text: str) -> Retry:
    """The failure of an answer that is neither 200 nor 206."""
    return Retry(f"answered {status}: {text}", final=is_final(status))


def changed(remote_path: str) -> Changed:
    return Changed(
        f"{remote_path} changed since it was listed (sha256 differs now): "
        "list it again and fetch the new version"
    )


#: Said of a member whose answers lack a usable Repr-Digest: its author learns where to look.
_NOT_OUR_PROTOCOL = "this member does not speak the p2pd peer protocol (docs/protocol.md §4.3)"
#: One member of an RFC 9530 Repr-Digest dictionary: ``sha-256=:<base64>:`` with parameters.
_SHA256_MEMBER = re.compile(r"sha-256=:([A-Za-z0-9+/]{43}=):(?:;.*)?")


def check_repr_digest(value: str | None, sha256: str, remote_path: str) -> None:
    """The answer's ``Repr-Digest`` names the listed bytes (docs/protocol.md §4.3).

    Required: without it a resumed download could append another file's bytes
    to the partial one.  Missing or unreadable, the member does not speak our
    protocol; readable but another digest, the file changed since it was listed.
    Either way asking that member again cannot help (``Changed``).
    """
    if value is None:
        raise Changed(f"the answer has no Repr-Digest header: {_NOT_OUR_PROTOCOL}")
    digests = [_SHA256_MEMBER.fullmatch(member.strip()) for member in value.split(",")]
    found = [match[1] for match in digests if match is not None]
    if len(found) != 1:
        raise Changed(
            f"the answer's Repr-Digest {value[:120]!r} has no single sha-256 digest "
            f"(sha-256=:<base64>:): {_NOT_OUR_PROTOCOL}"
        )
    if base64.b64decode(found[0]).hex() != sha256:
        raise changed(remote_path)


#: A Content-Length value: digits only (int() would also take "+5", " 5" or "٥").
_LENGTH = re.compile(r"[0-9]{1,19}")


def check_framing(status: int, fields: Sequence[tuple[str, str]], size: int, offset: int) -> None:
    """The answer is framed to carry exactly the listed bytes from ``offset``.

    A member cannot make us write, or hold, more than the listing said (a
    disk- or memory-filling stream), nor at another offset than we asked:
    the only framing taken is one ``Content-Length`` of exactly the bytes
    expected.  Any ``Transfer-Encoding`` is refused, with or without a
    length (RFC 9112 §6.3: a message with both is suspect; h11 would let the
    encoding win and read on), and so is an answer delimited by the close.
    ``fields``: the head's fields, names lowercased.  Changed: the member
    does not speak the protocol, and asking it again cannot help.
    """
    expected = size - offset
    encodings = [value for name, value in fields if name == "transfer-encoding"]
    if encodings:
        raise Changed(
            f"answered with Transfer-Encoding: {', '.join(encodings)[:60]}: a file answer must "
            f"be framed by Content-Length alone ({_NOT_OUR_PROTOCOL}); nothing was written"
        )
    lengths = [value.strip() for name, value in fields if name == "content-length"]
    length = ", ".join(lengths)
    if len(lengths) != 1 or not _LENGTH.fullmatch(lengths[0]) or int(lengths[0]) != expected:
        raise Changed(
            f"announced {length[:60] or 'no length'} where {expected} bytes were expected"
        )
    if status == 206:
        content_range = ", ".join(v for n, v in fields if n == "content-range")
        if content_range.strip() != f"bytes {offset}-{size - 1}/{size}":
            raise Changed(
                f"answered another range than the bytes from {offset} to its end "
                f"({content_range[:60]!r} for bytes {offset}-{size - 1}/{size})"
            )


def check_queued(queued: Queued) -> None:
    """Refuse a queued transfer whose fields are unsafe (one persisted by an older version)."""
    if not _SHA256.fullmatch(queued.sha256):
        raise Fatal("the member listed an invalid sha256; nothing was downloaded")
    # dest_name is "" unless the download lands elsewhere than remote_path.
    for path in [queued.remote_path] + ([queued.dest_name] if queued.dest_name else []):
        try:
            check_relpath(path)
        except UnsafePath as exc:
            raise Fatal(f"refusing {path!r}: {exc}") from None
    if queued.size < 0:
        raise Fatal("the member listed a negative size; nothing was downloaded")


def is_sha256(text: str) -> bool:
    return _SHA256.fullmatch(text) is not None


def fatal_os_error(exc: OSError, where: Path) -> Fatal:
    """A local error ends the transfer with a reason the user can act on."""
    if exc.errno == errno.ENOSPC:
        return Fatal(f"disk full writing {where}: free some space and fetch again")
    if exc.errno == errno.EROFS:
        return Fatal(
            f"{where} is on a read-only file system: remount it read-write and fetch again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Fatal(f"permission denied writing {where}: {exc.strerror}")
    return Fatal(f"cannot write {where}: {exc.strerror or exc}")


def verified(size: int, sha256: str, on_disk: int, hexdigest: str) -> None:
    """The file holds exactly the listed bytes: ``on_disk`` (its length, from fstat) is
    the listed size, and the hash of every byte in it is the listed sha256.  Retry
    (the caller discards the file) if not."""
    if on_disk != size:
        raise Retry(
            f"hash mismatch: the file holds {on_disk} bytes where {size} were listed; discarded"
        )
    if hexdigest != sha256:
        raise Retry("hash mismatch: the bytes received are not the listed file; discarded")


@dataclass
class ProgressWindow:
    """Less than MIN_PROGRESS bytes in any PROGRESS_WINDOW seconds ends the attempt."""

    start: float
    received: int = 0

    def add(self, count: int, now: float) -> None:
        self.received += count
        if now - self.start >= PROGRESS_WINDOW:
            if self.received < MIN_PROGRESS:
                raise Retry(f"sent {self.received} bytes in {PROGRESS_WINDOW:g} s: too slow")
            self.start, self.received = now, 0


@dataclass
class Attempts:
    """The rounds of one transfer: whom to ask, in what order, and when to stop.

    Round 0 asks the chosen member only (the alternate sources if it is no
    longer a member); later rounds ask it first, then every alternate source.
    A final refusal ends the transfer at once, and so does a round in which
    every source said the file changed; after ``rounds`` rounds it fails and
    keeps its partial file.  Between rounds: the delay ``round_over`` gives.
    """

    chosen_name: str
    rounds: int = MAX_ATTEMPTS
    backoff: Backoff = field(
        default_factory=lambda: Backoff(base=BACKOFF_BASE, cap=BACKOFF_CAP, rng=_JITTER)
    )
    round: int = 0
    #: The last failure, "member: reason": what the history says if it ends here.
    reason: str = ""
    #: Whether every failure of this round so far said "changed" (None: no failure yet).
    _all_changed: bool | None = None

    def __post_init__(self) -> None:
        self.reason = self.reason or f"{self.chosen_name} is offline"

    def asks_alternates(self, chosen_is_member: bool) -> bool:
        """Whether this round needs the alternate sources looked up."""
        return self.round > 0 or not chosen_is_member

    def sources(self, chosen: Source | None, alternates: Iterable[Source]) -> list[Source]:
        """The chosen member first, then the alternates (those it asks for), each once."""
        if not self.asks_alternates(chosen is not None):
            alternates = []
        ordered = [chosen] if chosen is not None else []
        seen = {member.id for member, _ in ordered}
        for member, path in alternates:
            if member.id not in seen:
                seen.add(member.id)
                ordered.append((member, path))
        return ordered

    def failed(self, member_name: str, failure: Retry) -> Fatal | None:
        """Record a failed attempt; the Fatal that ends the transfer now, if it must."""
        self.reason = f"{member_name}: {failure}"
        self._all_changed = isinstance(failure, Changed) and self._all_changed is not False
        return Fatal(self.reason) if failure.final else None

    def round_over(self) -> Fatal | float:
        """Nothing in this round succeeded: the Fatal that ends the transfer, or the
        seconds to wait (state ``waiting``) before the next round."""
        all_changed, self._all_changed = self._all_changed, None
        self.round += 1
        if all_changed:
            return Fatal(self.reason)
        if self.round >= self.rounds:
            return Fatal(f"gave up after {self.rounds} attempts: {self.reason}", keep_partial=True)
        return self.backoff.next_delay()
