"""``GET /search?…`` on the peer server (docs/protocol.md §4.4): a member searches our index.

The rules are p2pd.peer.search's; this module keeps what a search needs
between requests (the index's lowercased paths, computed once per listing,
and the per-member rate limit) and shapes the answer.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence

import trio

from p2pcommon.http.events import Response, error_response
from p2pd.peer.search import (
    Query,
    QueryError,
    SearchLimiter,
    lowered_paths,
    match,
    parse_target,
)
from p2pd.share.index import FileEntry

#: Per asking member: searches a second, and the burst.
SEARCH_RATE = 5.0
SEARCH_BURST = 10
#: Indexes larger than this are searched in a worker thread, one search at a time
#: (a glob over a million paths takes a quarter of a second: not on the event loop).
IN_LOOP_MAX = 50_000


class SearchRoute:
    """Answers searches of one share index.

    ``listing`` gives the index's sorted entries (a list replaced, never
    modified, on change) and ``generation`` the listing's generation.
    """

    def __init__(
        self,
        listing: Callable[[], Sequence[FileEntry]],
        generation: Callable[[], int],
        *,
        limiter: SearchLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        refused: Counter[str] | None = None,
    ) -> None:
        self._listing = listing
        self._generation = generation
        self.limiter = limiter or SearchLimiter(SEARCH_RATE, SEARCH_BURST)
        self.clock = clock
        #: The listing last searched, and its paths lowercased.
        self._lowered: tuple[Sequence[FileEntry], list[str]] = ((), [])
        self._large = trio.Lock()
        #: Searches answered, and those refused by reason (the peer server's counter).
        self.searches = 0
        self.refused: Counter[str] = Counter() if refused is None else refused

    async def answer(self, target: str, member: str) -> Response:
        """The answer to one search by ``member`` (its peer id)."""
        wait = self.limiter.admit(member, self.clock())
        if wait > 0:
            self.refused["too many searches"] += 1
            seconds = max(1, math.ceil(wait))
            return error_response(
                429,
                "too many searches",
                f"at most {SEARCH_RATE:g} searches a second per member (bursts of "
                f"{SEARCH_BURST}); retry after {seconds} s",
                [("Retry-After", str(seconds))],
            )
        try:
            query = parse_target(target)
        except QueryError as exc:
            self.refused["bad query"] += 1
            return error_response(400, "bad query", str(exc))
        self.searches += 1
        generation = self._generation()
        entries = self._listing()
        if len(entries) <= IN_LOOP_MAX:
            found, more = self._match(entries, query)
        else:
            async with self._large:
                found, more = await trio.to_thread.run_sync(self._match, entries, query)
        body = {
            "generation": generation,
            "files": [entry.to_json() for entry in found],
            "more": more,
        }
        data = json.dumps(body, separators=(",", ":")).encode()
        return Response(200, data, [("Content-Type", "application/json")])

    def _match(self, entries: Sequence[FileEntry], query: Query) -> tuple[list[FileEntry], bool]:
        # One tuple, read and replaced whole: a worker thread and the loop may both be here.
        listed, lowered = self._lowered
        if listed is not entries:
            lowered = lowered_paths(entries)
            self._lowered = (entries, lowered)
        return match(entries, query, lowered=lowered)
