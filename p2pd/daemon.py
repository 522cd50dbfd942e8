"""The daemon: wires identity, share, peer server, registry link and control socket."""

from __future__ import annotations

import errno
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Callable

import trio

from p2pcommon.boundary import keep_running
from p2pcommon.http.server import Limits
from p2pcommon.lifecycle import SHUTDOWN_DEADLINE, ConfigError, StartupError
from p2pcommon.memory import release_start_up_garbage
from p2pcommon.models import RegisterRequest, split_host_port
from p2pcommon.options import changed_keys
from p2pcommon.registry_client import RegistryClient
from p2pcommon.service import Notifier, Termination, reload_on_hangup, termination_signals
from p2pd.control.methods import Rpc
from p2pd.control.server import ControlServer
from p2pd.fetch.downloads import Downloads
from p2pd.fetch.history import History
from p2pd.membership.directory import Directory
from p2pd.membership.link import KeySigner, RegistryLink
from p2pd.options import LIVE_KEYS, PeerOptions
from p2pd.peer.client import PeerPool
from p2pd.peer.server import PeerServer
from p2pd.prepare import Prepared
from p2pd.share.watching import Share
from p2pd.tls.contexts import ServerContexts
from p2pd.tls.identity import unusable_key

log = logging.getLogger("p2pd")

#: Seconds between STATUS= updates to systemd.
STATUS_PERIOD = 5.0

#: Reads the configuration again: new settings and secret, or ConfigError.
Reloader = Callable[[], tuple[PeerOptions, str]]


class Daemon:
    def __init__(self, prepared: Prepared, reload: Reloader | None = None) -> None:
        self.settings = prepared.options
        self._secret = prepared.secret
        self.identity = prepared.identity
        self._network = prepared.network
        self._config_path = prepared.config_path
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
        settings, identity = self.settings, self.identity
        try:
            contexts = ServerContexts(identity, self._network)
        except ssl.SSLError as exc:  # changed since p2pd.prepare checked the pair
            why = unusable_key(identity.key_path, identity.cert_path, exc)
            raise StartupError(f"identity in {settings.state_dir}: {why}") from None
        except OSError as exc:
            raise StartupError(f"identity in {settings.state_dir}: {exc}") from None
        client = RegistryClient(settings.registries, self._secret)
        self.directory = Directory(identity.id, client, interval=settings.heartbeat_interval)
        self.share = Share(
            settings.share_dir, settings.state_dir, stable_after=settings.stable_after
        )
        self.server = PeerServer(
            self.share,
            self.directory,
            contexts,
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
        self.downloads = Downloads(self.pool, self.directory, settings.download_dir, history)
        # Sharing and downloading work without it; status says why.
        await history.check()
        async with client:
            self.link = RegistryLink(
                client,
                registration,
                self.directory,
                prove=KeySigner(identity.key_path),
                heartbeat_interval=settings.heartbeat_interval,
                on_change=self._update_status,
            )
            self.rpc = Rpc(
                identity.id,
                lambda: self.settings,  # the settings in force, also after a reload
                self.directory,
                self.share,
                self.server,
                self.link,
                self.pool,
                self.downloads,
                history,
                config_path=self._config_path,
            )
            control = ControlServer(settings.control_socket, self.rpc.methods())
            async with trio.open_nursery() as nursery:
                await nursery.start(control.run)
                # A SIGHUP that came during start-up is applied now.
                await nursery.start(
                    reload_on_hangup, self.reload, self.notifier, self.status_line, hangups
                )
                listeners = await self._listen()
                if settings.metrics_listen:
                    # Before the share runs, so that the first scan's end is seen.
                    await nursery.start(self._serve_metrics)
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
                release_start_up_garbage()
                signal_name = await termination.wait()
                log.info("stopping on %s", signal_name)
                self.notifier.stopping()
                await self.link.leave()
                await self.server.http.shutdown(SHUTDOWN_DEADLINE)
                nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await self.pool.aclose()
        log.info("stopped")

    async def _serve_metrics(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Imported only when metrics are served (off by default): prometheus_client costs ~1 MiB.
        from p2pd.metrics import PeerMetrics, open_listeners

        listeners = await open_listeners(self.settings.metrics_listen)
        metrics = PeerMetrics(
            self.server, self.downloads, self.share, self.directory, lambda: self.link.registered
        )
        await metrics.run(listeners, task_status=task_status)

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
            f"{registered}; {self.directory.peers} peers; "
            f"{len(self.share.index)} shared files{indexing}; "
            f"{self.server.stats.active} uploads; {len(self.downloads.active)} downloads"
        )
        problems = [p for p in (self.share.warning, self.history.error) if p]
        return "; ".join([line, *problems])

    def _update_status(self) -> None:
        self.notifier.status(self.status_line())

    async def _status_loop(self) -> None:
        async def one_round() -> None:
            await trio.sleep(STATUS_PERIOD)
            self._update_status()

        await keep_running("status", one_round)
