"""The control socket's methods (docs/protocol.md §6), over the daemon's parts.

The daemon (p2pd.daemon) builds the parts and wires them; this module only
answers calls, so that each method can be tested without a running daemon.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from p2pcommon import __version__
from p2pcommon.boundary import failures
from p2pcommon.memory import release_free_memory
from p2pcommon.models import Member
from p2pd.control.by_sha256 import start_by_sha256, wanted_content
from p2pd.control.fetch_rules import combined_progress, intended, too_many, unsafe
from p2pd.control.jsonrpc import INVALID_PARAMS, OPERATION_FAILED, RawJson, RpcError
from p2pd.control.search import members_to_search, search_call
from p2pd.control.server import Method, Notify
from p2pd.fetch.downloads import Downloads, NotQueued, Transfer
from p2pd.fetch.history import History, HistoryUnavailable
from p2pd.fetch.model import Outcome
from p2pd.membership.directory import Directory, LookupUnavailable, PeerLookupError
from p2pd.membership.link import RegistryLink
from p2pd.options import PeerOptions
from p2pd.peer.client import PeerPool, PeerUnavailable
from p2pd.peer.listing import MemberListing
from p2pd.peer.server import PeerServer, status_fields
from p2pd.share.watching import Share

log = logging.getLogger("p2pd.rpc")

#: Members listed past which the memory their pages' parse freed is given back.
RELEASE_AFTER_MEMBERS = 1000
#: Seconds between progress notifications to a fetch that asked for them.
PROGRESS_PERIOD = 0.5
#: Seconds `cancel` waits for the transfer to end and its partial file to go
#: (a transfer notices within a second; removing the file is one unlink).
CANCEL_WAIT = 10.0


class FetchRefused(Exception):
    """A fetch that fails before any transfer exists; recorded in the history as such.

    ``peer_id``/``peer_name``: the member, as far as it is known by then.
    """

    def __init__(self, error: RpcError, peer_id: str = "", peer_name: str = "") -> None:
        super().__init__(error.message)
        self.error = error
        self.peer_id = peer_id
        self.peer_name = peer_name


@dataclass
class Rpc:
    """The ten control methods; ``methods()`` is what the ControlServer serves."""

    own_id: str
    #: The settings in force: a reload (SIGHUP) replaces the daemon's object.
    settings: Callable[[], PeerOptions]
    directory: Directory
    share: Share
    server: PeerServer
    link: RegistryLink
    pool: PeerPool
    downloads: Downloads
    history: History
    clock: Callable[[], float] = field(default=time.time)
    #: The config file the daemon was started with (None: the environment alone).
    config_path: Path | None = None

    def methods(self) -> dict[str, Method]:
        return {
            "status": self.rpc_status,
            "peers": self.rpc_peers,
            "ls": self.rpc_ls,
            "shared": self.rpc_shared,
            "rescan": self.rpc_rescan,
            "fetch": self.rpc_fetch,
            "downloads": self.rpc_downloads,
            "history": self.rpc_history,
            "cancel": self.rpc_cancel,
            "search": self.rpc_search,
        }

    async def rpc_status(self, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        settings = self.settings()
        return {
            "id": self.own_id,
            "name": settings.name,
            "registered": self.link.registered,
            "listen": settings.listen,
            "shared_files": len(self.share.index),
            "version": __version__,
            # For `p2pctl doctor`, which checks the config of the daemon it can reach.
            "config": None if self.config_path is None else str(self.config_path),
            "registry": self.link.registry_url,
            "registry_error": self.link.error,
            # The registry's count at our last heartbeat, ourselves not included.
            "peers": self.directory.peers,
            "share_dir": str(settings.share_dir),
            "download_dir": str(settings.download_dir),
            "watching": self.share.watching,
            "warning": self.share.warning,
            **self.share.status(),
            "history_error": self.history.error,
            # Units of work that failed and were contained, by kind (see the log).
            "failures": dict(failures),
            **status_fields(self.server),
        }

    async def rpc_peers(self, params: dict[str, Any], notify: Notify) -> list[dict[str, Any]]:
        """Every other member (PATTERN: those whose name or id matches), sorted by name;
        fetched from the registry page by page without certificates, when asked."""
        pattern = params.get("pattern")
        if pattern is not None and (not isinstance(pattern, str) or len(pattern) > 256):
            raise RpcError(
                INVALID_PARAMS, "peers takes params {'pattern': a name, an id or a glob}"
            )
        found: list[Member] = []
        try:
            async for page in self.directory.pages(pattern or None):
                found.extend(page)
        except LookupUnavailable as exc:
            raise RpcError(OPERATION_FAILED, f"{exc}; try again shortly") from None
        found.sort(key=lambda m: (m.name, m.id))
        listed = [
            {"id": m.id, "name": m.name, "addresses": m.addresses, "last_seen": m.last_seen}
            for m in found
        ]
        if len(found) >= RELEASE_AFTER_MEMBERS:
            # The pages' parse left megabytes of garbage at thousands of members: give it back.
            del found
            release_free_memory()
        return listed

    async def rpc_ls(self, params: dict[str, Any], notify: Notify) -> RawJson:
        peer = params.get("peer")
        if not isinstance(peer, str) or not peer:
            raise RpcError(INVALID_PARAMS, "ls needs params {'peer': NAME, ID or ID-PREFIX}")
        try:
            _, listing = await self._files_of(peer)
        except FetchRefused as exc:
            raise exc.error from None
        # The kept listing is the answer's JSON already: nothing to build.
        return RawJson(listing.data)

    async def rpc_shared(self, params: dict[str, Any], notify: Notify) -> RawJson:
        # The peer server's listing body, kept by generation: its "files" array
        # is this answer, built once per change of the share, off the loop.
        return RawJson(await self.server.listing_files_json())

    async def rpc_rescan(self, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        try:
            await self.share.rescan()
        except OSError as exc:
            raise RpcError(
                OPERATION_FAILED,
                f"cannot read share_dir {self.settings().share_dir}: {exc.strerror or exc}",
            ) from None
        # The generation members see in the listing and its ETag, not the index's count.
        return {"shared_files": len(self.share.index), "generation": self.server.generation}

    async def rpc_fetch(self, params: dict[str, Any], notify: Notify) -> Any:
        """One file (an outcome object), or a whole folder ending in '/' (a list of them).

        Progress notifications only when the call asks (``"progress": true``):
        a generic JSON-RPC client expects its answer, not unsolicited lines.
        """
        if "sha256" in params:
            return await self._fetch_by_sha256(params, notify)
        peer, path = params.get("peer"), params.get("path")
        if not isinstance(peer, str) or not isinstance(path, str) or not peer or not path:
            raise RpcError(INVALID_PARAMS, "fetch needs params {'peer': PEER, 'path': FILE}")
        started_at = self.clock()
        wanted = path.lstrip("/")
        try:
            transfers = await self._start(peer, path, wanted)
        except FetchRefused as exc:
            raise await self._refused(exc, peer, wanted, started_at) from None
        return await self._wait(transfers, params, notify, wanted.endswith("/"))

    async def _fetch_by_sha256(self, params: dict[str, Any], notify: Notify) -> Any:
        """`fetch --sha256 HEX [--name NAME]` (p2pd.control.by_sha256): an outcome as a
        fetch's, with every member that served pieces in ``sources``."""
        sha256, name = wanted_content(params)
        started_at = self.clock()
        try:
            transfer = await start_by_sha256(
                self.pool,
                self._members_to_search,
                self.downloads,
                self.settings().download_dir,
                sha256,
                name,
            )
        except RpcError as exc:
            raise await self._refused(FetchRefused(exc), sha256[:12], name, started_at) from None
        return await self._wait([transfer], params, notify, folder=False)

    async def _wait(
        self, transfers: list[Transfer], params: dict[str, Any], notify: Notify, folder: bool
    ) -> Any:
        """The answer of a fetch that started ``transfers``: ids at once with ``detach``,
        else their outcomes once done (with progress notifications if asked)."""
        if params.get("detach"):
            ids = [{"id": t.queued.id} for t in transfers]
            return ids if folder else ids[0]
        if params.get("progress") is True:
            while not all(t.done.is_set() for t in transfers):
                await notify("progress", combined_progress(transfers))
                with trio.move_on_after(PROGRESS_PERIOD):
                    for transfer in transfers:
                        await transfer.done.wait()
        else:
            for transfer in transfers:
                await transfer.done.wait()
        outcomes = [t.outcome.to_json() for t in transfers if t.outcome is not None]
        return outcomes if folder else outcomes[0]

    async def _start(self, peer: str, path: str, wanted: str) -> list[Transfer]:
        """The transfers of one fetch; FetchRefused before any starts if one cannot."""
        member, listing = await self._files_of(peer)
        known = {"peer_id": member.id, "peer_name": member.name}
        folder = wanted.endswith("/")
        entries = listing.under(wanted) if folder else listing.with_path(wanted)
        if not entries:
            is_folder = not folder and listing.has_under(wanted + "/")
            message = (
                f"{path!r} is a folder: fetch `{wanted}/` to get all its files"
                if is_folder
                else f"{member.name} does not share {path!r}: "
                f"`p2pctl ls {member.name}` lists its files"
            )
            raise FetchRefused(RpcError(OPERATION_FAILED, message), **known)
        # Every destination is checked before the first transfer starts: a
        # folder with one unsafe name is refused whole, not half fetched.
        refused = unsafe(self.settings().download_dir, entries)
        if refused:
            reasons = "; ".join(refused)
            what = f"{len(refused)} of {len(entries)} files" if folder else "it"
            raise FetchRefused(
                RpcError(
                    OPERATION_FAILED,
                    f"refusing {path!r}: {reasons}"
                    + (f"; nothing was fetched ({what} refused)" if folder else ""),
                ),
                **known,
            )
        new = sum(not self.downloads.joins(entry) for entry in entries)
        if new > self.downloads.room:
            queued = len(self.downloads.active)
            raise FetchRefused(
                RpcError(OPERATION_FAILED, too_many(path, wanted, entries, new, queued)), **known
            )
        transfers: list[Transfer] = []
        for entry in entries:
            try:
                transfers.append(await self.downloads.start(member, entry))
            except NotQueued as exc:  # no room after all, or the destination is unreadable
                raise FetchRefused(
                    RpcError(OPERATION_FAILED, f"refusing {path!r}: {exc}"), **known
                ) from None
        return transfers

    async def _refused(
        self, refused: FetchRefused, peer: str, wanted: str, started_at: float
    ) -> RpcError:
        """The error of a fetch refused before any transfer, carrying its outcome.

        No transfer exists to record its outcome: the refusal itself is recorded,
        and sent along, so that `p2pctl --json fetch` can print it as any other
        failed outcome (docs/protocol.md §7)."""
        outcome = await self._record_refusal(refused, peer, wanted, started_at)
        error = refused.error
        return RpcError(
            error.code, error.message, {**(error.data or {}), "outcome": outcome.to_json()}
        )

    async def _record_refusal(
        self, refused: FetchRefused, peer: str, wanted: str, started_at: float
    ) -> Outcome:
        """A `failed` outcome in the history for a fetch that never had a transfer."""
        download_dir = self.settings().download_dir
        outcome = Outcome(
            id=secrets.token_hex(4),
            path=str(intended(download_dir, wanted)),
            remote_path=wanted,
            peer_id=refused.peer_id,
            # Who the user meant, in their words, when no member is known.
            peer_name=refused.peer_name or peer,
            sha256="",
            size=0,
            status="failed",
            error=refused.error.message,
            started_at=started_at,
            finished_at=self.clock(),
            bytes_per_second=0.0,
        )
        log.info("failed %s from %s: %s", wanted, outcome.peer_name, outcome.error)
        await self.history.record(outcome)
        return outcome

    async def rpc_search(self, params: dict[str, Any], notify: Notify) -> RawJson:
        """Every member asked, the matches grouped by content (p2pd.control.search)."""
        return await search_call(params, notify, self.pool, self._members_to_search)

    async def _members_to_search(self) -> list[Member]:
        if not self.link.registered:
            # Members answer members only: every one of them would refuse us.
            raise RpcError(
                OPERATION_FAILED,
                f"this daemon is not registered with a registry yet ({self.link.error}), and "
                "members answer members only: see `p2pctl status`, then search again",
            )
        return await members_to_search(self.directory)

    async def rpc_downloads(self, params: dict[str, Any], notify: Notify) -> list[dict[str, Any]]:
        return [t.to_json() for t in self.downloads.active.values()]

    async def rpc_history(self, params: dict[str, Any], notify: Notify) -> list[dict[str, Any]]:
        try:
            outcomes = await self.history.outcomes()
        except HistoryUnavailable as exc:
            raise RpcError(
                OPERATION_FAILED, f"cannot read the history: {exc}; check state_dir's disk"
            ) from None
        return [o.to_json() for o in outcomes]

    async def rpc_cancel(self, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        """Answers once the transfer has ended and its partial file is gone: whoever
        asked may look at download_dir at once, or fetch the file again."""
        transfer_id = params.get("id")
        transfer = self.downloads.active.get(transfer_id) if isinstance(transfer_id, str) else None
        if transfer is None or not self.downloads.cancel(transfer.queued.id):
            raise RpcError(
                OPERATION_FAILED,
                f"no transfer {transfer_id!r} in progress: `p2pctl downloads` lists them",
            )
        with trio.move_on_after(CANCEL_WAIT):
            await transfer.done.wait()
        if not transfer.done.is_set():
            raise RpcError(
                OPERATION_FAILED,
                f"transfer {transfer_id} is cancelled but still stopping after {CANCEL_WAIT:g} s "
                "(see the log): `p2pctl downloads` shows when it is gone",
            )
        return {"id": transfer_id, "cancelled": True}

    async def _files_of(self, peer: str) -> tuple[Member, MemberListing]:
        """The member PEER names and its listing, or FetchRefused saying why not."""
        member = await self._resolve(peer)
        try:
            listing = await self.pool.listing(member)
        except PeerUnavailable as exc:
            raise FetchRefused(
                RpcError(OPERATION_FAILED, str(exc)), member.id, member.name
            ) from None
        return member, listing

    async def _resolve(self, peer: str) -> Member:
        try:
            return await self.directory.resolve(peer, own_name=self.settings().name)
        except LookupUnavailable as exc:
            raise FetchRefused(RpcError(OPERATION_FAILED, f"{exc}; try again shortly")) from None
        except PeerLookupError as exc:
            data = {"candidates": [{"id": m.id, "name": m.name} for m in exc.candidates]}
            raise FetchRefused(RpcError(OPERATION_FAILED, str(exc), data)) from None
