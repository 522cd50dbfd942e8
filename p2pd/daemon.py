"""The daemon: wires identity, share, peer server, registry link and control socket."""

from __future__ import annotations

import errno
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from p2pcommon import __version__
from p2pcommon.boundary import failures, keep_running
from p2pcommon.httpserver import Limits
from p2pcommon.models import Listing, Member, RegisterRequest, split_host_port
from p2pcommon.registry_client import RegistryClient
from p2pcommon.service import Notifier, Termination, reload_on_hangup, termination_signals
from p2pcommon.settings import ConfigError, changed_keys
from p2pd.config import LIVE_KEYS, PeerSettings
from p2pd.control import ControlServer, Method, Notify
from p2pd.downloads import Downloads, Transfer
from p2pd.history import History, HistoryUnavailable
from p2pd.identity import load_or_create
from p2pd.jsonrpc import OPERATION_FAILED, RpcError
from p2pd.members import Members, PeerLookupError
from p2pd.peerclient import InvalidListing, PeerPool, PeerRefused, PeerUnreachable
from p2pd.peerserver import PeerServer, status_fields
from p2pd.registry_link import RegistryLink
from p2pd.share import Share
from p2pd.tls import ServerContexts

log = logging.getLogger("p2pd")

SHUTDOWN_DEADLINE = 5.0
#: Seconds between STATUS= updates to systemd.
STATUS_PERIOD = 5.0
#: Seconds between progress notifications to a waiting `p2pctl fetch`.
PROGRESS_PERIOD = 0.5


class StartupError(Exception):
    """The daemon cannot start for a reason outside its configuration."""


#: Reads the configuration again: new settings and secret, or ConfigError.
Reloader = Callable[[], tuple[PeerSettings, str]]


class Daemon:
    def __init__(self, settings: PeerSettings, secret: str, reload: Reloader | None = None) -> None:
        self.settings = settings
        self._secret = secret
        self._reload = reload
        self.notifier = Notifier()

    async def run(self) -> None:
        # First thing: until trio's receivers are installed, SIGTERM and SIGHUP
        # kill the process without a goodbye to the registry.
        with (
            termination_signals() as termination,
            trio.open_signal_receiver(signal.SIGHUP) as hangups,
        ):
            await self._run(termination, hangups)

    async def _run(self, termination: Termination, hangups: AsyncIterator[int]) -> None:
        settings = self.settings
        try:
            identity, new = await trio.to_thread.run_sync(load_or_create, settings.state_dir)
        except (ValueError, OSError) as exc:
            raise StartupError(f"identity in {settings.state_dir}: {exc}") from None
        log.info(
            "%s identity %s (%s)",
            "created" if new else "using",
            identity.short_id,
            identity.cert_path,
        )
        self.identity = identity
        self.members = Members.empty(identity.id)
        self.share = Share(settings.share_dir, settings.state_dir)
        self.server = PeerServer(
            self.share,
            self.members,
            ServerContexts(identity),
            upload_slots=settings.upload_slots,
            rate_limit=settings.upload_rate_limit,
            limits=Limits(max_body_bytes=0, idle_timeout=60.0, request_timeout=15.0),
        )
        self.registration = registration = RegisterRequest(
            id=identity.id,
            name=settings.name,
            cert=identity.cert_pem,
            port=settings.listen_port,
            addresses=settings.advertise,
        )
        self.history = history = History(settings.state_dir / "history.sqlite3")
        self.pool = PeerPool(identity)
        self.downloads = Downloads(self.pool, self.members, settings.download_dir, history)
        try:
            await trio.to_thread.run_sync(history.check)
        except HistoryUnavailable as exc:
            # Sharing and downloading work without it; status says why.
            self.downloads.history_failed(exc)
        async with RegistryClient(settings.registries, self._secret) as client:
            self.link = RegistryLink(
                client,
                registration,
                self.members,
                heartbeat_interval=settings.heartbeat_interval,
                on_change=self._update_status,
            )
            control = ControlServer(settings.control_socket, self.methods())
            async with trio.open_nursery() as nursery:
                await nursery.start(control.run)
                # A SIGHUP that came during start-up is applied now.
                await nursery.start(
                    reload_on_hangup, self.reload, self.notifier, self.status_line, hangups
                )
                listeners = await self._listen()
                nursery.start_soon(self.notifier.keep_watchdog_fed)
                self.notifier.status("indexing the share")
                # Returns once the share is indexed or after a bounded wait: a large
                # first scan goes on in the background, serving what is hashed.
                await nursery.start(self.share.run)
                await nursery.start(self.server.http.run, listeners)
                nursery.start_soon(keep_running, "registry link", self.link.run)
                await nursery.start(self.downloads.run)
                nursery.start_soon(self._status_loop)
                log.info(
                    "serving %d files from %s on %s; control socket %s",
                    len(self.share.index),
                    settings.share_dir,
                    settings.listen,
                    settings.control_socket,
                )
                self.notifier.ready(self.status_line())
                signal_name = await termination.wait()
                log.info("stopping on %s", signal_name)
                self.notifier.stopping()
                await self.link.leave()
                await self.server.http.shutdown(SHUTDOWN_DEADLINE)
                nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await self.pool.aclose()
        log.info("stopped")

    async def _listen(self) -> list[trio.SocketListener]:
        host, port = split_host_port(self.settings.listen)
        try:
            return await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            hint = " (is another p2pd running?)" if exc.errno == errno.EADDRINUSE else ""
            raise StartupError(
                f"cannot listen on {self.settings.listen} (key 'listen'): {exc.strerror}{hint}"
            ) from None

    # -- reload -------------------------------------------------------------

    async def reload(self) -> None:
        """Apply what can change while running; say what needs a restart. Never dies."""
        if self._reload is None:
            return
        try:
            new, secret = await trio.to_thread.run_sync(self._reload)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        changed = changed_keys(self.settings, self._secret, new, secret)
        live = changed & LIVE_KEYS
        if live:
            self.settings = self.settings.model_copy(update={k: getattr(new, k) for k in live})
            self._apply(live)
        if later := sorted(changed - live):
            log.warning(
                "reload: %s changed; that takes a restart: systemctl restart p2pd",
                ", ".join(later),
            )
        try:
            await self.share.rescan()
        except OSError as exc:
            log.warning("reload: cannot rescan the share: %s", exc.strerror or exc)
        log.info("reloaded: %s", ", ".join(sorted(live)) if live else "no live key changed")

    def _apply(self, keys: set[str]) -> None:
        settings = self.settings
        if "upload_rate_limit" in keys:
            self.server.set_rate_limit(settings.upload_rate_limit)
        if "heartbeat_interval" in keys:
            self.link.set_heartbeat_interval(settings.heartbeat_interval)
        if keys & {"name", "advertise"}:
            self.registration = self.registration.model_copy(
                update={"name": settings.name, "addresses": settings.advertise}
            )
            self.link.update_registration(self.registration)

    # -- status -------------------------------------------------------------

    def status_line(self) -> str:
        registered = "registered" if self.link.registered else (self.link.error or "not registered")
        indexing = " (indexing)" if self.share.indexing else ""
        line = (
            f"{registered}; {len(self.members.others())} peers; "
            f"{len(self.share.index)} shared files{indexing}; "
            f"{self.server.stats.active} uploads; {len(self.downloads.active)} downloads"
        )
        problems = [p for p in (self.share.warning, self.downloads.history_error) if p]
        return "; ".join([line, *problems])

    def _update_status(self) -> None:
        self.notifier.status(self.status_line())

    async def _status_loop(self) -> None:
        async def one_round() -> None:
            await trio.sleep(STATUS_PERIOD)
            self._update_status()

        await keep_running("status", one_round)

    # -- control methods ----------------------------------------------------

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
        }

    async def rpc_status(self, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        settings = self.settings
        return {
            "id": self.identity.id,
            "name": settings.name,
            "registered": self.link.registered,
            "listen": settings.listen,
            "shared_files": len(self.share.index),
            "version": __version__,
            "registry": self.link.registry_url,
            "registry_error": self.link.error,
            "peers": len(self.members.others()),
            "share_dir": str(settings.share_dir),
            "download_dir": str(settings.download_dir),
            "watching": self.share.watching,
            "warning": self.share.warning,
            **self.share.status(),
            "history_error": self.downloads.history_error,
            # Units of work that failed and were contained, by kind (see the log).
            "failures": dict(failures),
            **status_fields(self.server),
        }

    async def rpc_peers(self, params: dict[str, Any], notify: Notify) -> list[dict[str, Any]]:
        return [
            {"id": m.id, "name": m.name, "addresses": m.addresses, "last_seen": m.last_seen}
            for m in self.members.others()
        ]

    async def rpc_ls(self, params: dict[str, Any], notify: Notify) -> list[dict[str, Any]]:
        peer = params.get("peer")
        if not isinstance(peer, str) or not peer:
            raise RpcError(-32602, "ls needs params {'peer': NAME, ID or ID-PREFIX}")
        _, listing = await self._files_of(peer)
        return [entry.to_json() for entry in listing.files]

    async def rpc_shared(self, params: dict[str, Any], notify: Notify) -> list[dict[str, object]]:
        return [entry.to_json() for entry in self.share.index.listing()]

    async def rpc_rescan(self, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        try:
            await self.share.rescan()
        except OSError as exc:
            raise RpcError(
                OPERATION_FAILED,
                f"cannot read share_dir {self.settings.share_dir}: {exc.strerror or exc}",
            ) from None
        return {"shared_files": len(self.share.index), "generation": self.share.index.generation}

    async def rpc_fetch(self, params: dict[str, Any], notify: Notify) -> Any:
        """One file (an outcome object), or a whole folder ending in '/' (a list of them)."""
        peer, path = params.get("peer"), params.get("path")
        if not isinstance(peer, str) or not isinstance(path, str) or not peer or not path:
            raise RpcError(-32602, "fetch needs params {'peer': PEER, 'path': FILE}")
        member, listing = await self._files_of(peer)
        wanted = path.lstrip("/")
        folder = wanted.endswith("/")
        entries = [
            f for f in listing.files if (f.path.startswith(wanted) if folder else f.path == wanted)
        ]
        if not entries:
            raise RpcError(
                OPERATION_FAILED,
                f"{member.name} does not share {path!r}: `p2pctl ls {member.name}` lists its files",
            )
        try:
            transfers = [await self.downloads.start(member, entry) for entry in entries]
        except ValueError as exc:
            raise RpcError(OPERATION_FAILED, f"refusing {path!r}: {exc}") from None
        if params.get("detach"):
            ids = [{"id": t.queued.id} for t in transfers]
            return ids if folder else ids[0]
        while not all(t.done.is_set() for t in transfers):
            await notify("progress", _combined_progress(transfers))
            with trio.move_on_after(PROGRESS_PERIOD):
                for transfer in transfers:
                    await transfer.done.wait()
        outcomes = [t.outcome.to_json() for t in transfers if t.outcome is not None]
        return outcomes if folder else outcomes[0]

    async def rpc_downloads(self, params: dict[str, Any], notify: Notify) -> list[dict[str, Any]]:
        return [t.to_json() for t in self.downloads.active.values()]

    async def rpc_history(self, params: dict[str, Any], notify: Notify) -> list[dict[str, Any]]:
        try:
            outcomes = await trio.to_thread.run_sync(self.history.outcomes)
        except HistoryUnavailable as exc:
            raise RpcError(
                OPERATION_FAILED, f"cannot read the history: {exc}; check state_dir's disk"
            ) from None
        # Outcomes that could not be written while the history was failing.
        recorded = {o.id for o in outcomes}
        recent = [o for o in self.downloads.unrecorded if o.id not in recorded]
        return [o.to_json() for o in sorted(recent + outcomes, key=lambda o: -o.finished_at)]

    async def rpc_cancel(self, params: dict[str, Any], notify: Notify) -> dict[str, Any]:
        transfer_id = params.get("id")
        if not isinstance(transfer_id, str) or not self.downloads.cancel(transfer_id):
            raise RpcError(
                OPERATION_FAILED,
                f"no transfer {transfer_id!r} in progress: `p2pctl downloads` lists them",
            )
        return {"id": transfer_id, "cancelled": True}

    async def _files_of(self, peer: str) -> tuple[Member, Listing]:
        """The member PEER names and its listing, or the RpcError that explains why not."""
        member = self._resolve(peer)
        try:
            listing = await self.pool.listing(member)
        except (PeerUnreachable, PeerRefused, InvalidListing) as exc:
            raise RpcError(OPERATION_FAILED, str(exc)) from None
        return member, listing

    def _resolve(self, peer: str) -> Member:
        try:
            return self.members.resolve(peer)
        except PeerLookupError as exc:
            data = {"candidates": [{"id": m.id, "name": m.name} for m in exc.candidates]}
            raise RpcError(OPERATION_FAILED, str(exc), data) from None


def _combined_progress(transfers: list[Transfer]) -> dict[str, Any]:
    if len(transfers) == 1:
        return transfers[0].to_json()
    return {
        "id": ",".join(t.queued.id for t in transfers),
        "size": sum(t.queued.size for t in transfers),
        "bytes_done": sum(t.progress.bytes_done for t in transfers),
        "rate": sum(t.progress.rate for t in transfers),
        "files": len(transfers),
        "files_done": sum(t.done.is_set() for t in transfers),
    }
