"""registryd: the trio glue around RegistryApp (its command line is registryd.main)."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import trio

from p2pcommon.boundary import keep_running
from p2pcommon.http.server import HttpServer, Limits
from p2pcommon.lifecycle import SHUTDOWN_DEADLINE, ConfigError, StartupError
from p2pcommon.memory import release_start_up_garbage
from p2pcommon.models import split_host_port
from p2pcommon.options import changed_keys
from p2pcommon.service import (
    Notifier,
    Termination,
    reload_on_hangup,
    termination_signals,
)
from p2pcommon.signing.signer import Signer
from registryd.app import RegistryApp
from registryd.guards import FailureLimiter, LoadShedder, LookupLimiter, NewMemberLimiter
from registryd.health import StoreHealth
from registryd.metrics import RegistryMetrics
from registryd.options import RegistryOptions
from registryd.pace import Pace
from registryd.store import MemoryStore, Store, StoreError
from registryd.watched_store import WatchedStore

log = logging.getLogger("registryd")


def make_store(settings: RegistryOptions) -> Store:
    if settings.store == "memory":
        return MemoryStore()
    from registryd.redis_store import RedisStore

    try:
        # Builds a client only: no connection is made before the first call,
        # so an absent Redis never stops the start (it makes 503s instead).
        return RedisStore(settings.store)
    except StoreError as exc:
        raise StartupError(f"cannot use the store {_store_name(settings)}: {exc}") from None


def _ssl_context(settings: RegistryOptions) -> ssl.SSLContext:
    assert settings.tls_cert is not None and settings.tls_key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"keys 'tls_cert'/'tls_key': cannot load them: {exc}") from None
    return context


async def _shared_port_listeners(host: str, port: int) -> list[trio.abc.Listener[Any]]:
    """Listeners like trio's own, with SO_REUSEPORT: the kernel spreads the
    connections over every process listening so on the port (same user)."""
    socks = []
    try:
        for family, kind, proto, _, address in await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            sock = trio.socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            # As trio asks: the kernel lowers it to net.core.somaxconn.
            sock.listen(0xFFFF)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return [trio.SocketListener(sock) for sock in socks]


async def _open_listeners(settings: RegistryOptions) -> list[trio.abc.Listener[Any]]:
    host, port = split_host_port(settings.listen)
    try:
        if settings.reuse_port:
            listeners = await _shared_port_listeners(host, port)
        else:
            listeners = list(await trio.open_tcp_listeners(port, host=host))
    except OSError as exc:
        hint = " (is another registryd running?)" if exc.errno == errno.EADDRINUSE else ""
        if settings.reuse_port and hint:
            hint = " (a process of another user, or one without reuse_port, holds it)"
        raise StartupError(f"cannot listen on {settings.listen}: {exc.strerror}{hint}") from None
    if settings.tls_cert is not None:
        context = _ssl_context(settings)
        listeners = [trio.SSLListener(lst, context, https_compatible=True) for lst in listeners]
    return listeners


async def _census_loop(store: Store, metrics: RegistryMetrics, pace: Pace, period: float) -> None:
    """Once a ``period``: drop the members whose lease ran out, count the members and
    the registry processes on the store (the pace's inputs).

    The round is also the store's health probe (``expire``), so the period
    bounds how soon a returning Redis is noticed.  A lookup never answers an
    expired member whatever this period is.
    """

    async def census_round() -> None:
        now = time.time()
        try:
            gone = await store.expire(now)
            pace.members = await store.count(now)
            pace.processes = await store.processes(now)
        except StoreError:
            gone = []  # the WatchedStore logged the outage once; probe again next round
        for member_id in gone:
            log.info("%s expired: its lease ran out without a heartbeat", member_id[:7])
        metrics.expiries.inc(len(gone))
        await trio.sleep(period)

    # Any other error is a bug: logged, and the loop goes on after a pause.
    await keep_running("census", census_round, pause=period, max_pause=10.0, logger=log)


#: Reads the configuration again: new settings and secret, or ConfigError.
Reloader = Callable[[], tuple[RegistryOptions, str]]


async def check_reload(settings: RegistryOptions, secret: str, load: Reloader) -> None:
    """On SIGHUP: check the file now, so that a restart will not fail on it.

    registryd applies its configuration at start only (members re-register by
    themselves after a restart), so a reload never changes the running one.
    """
    try:
        new, new_secret = await trio.to_thread.run_sync(load)
    except ConfigError as exc:
        log.error("reload: the config has an error; fix it before any restart: %s", exc)
        return
    changed = changed_keys(settings, secret, new, new_secret)
    if changed:
        log.warning(
            "reload: %s changed; registryd applies its config at start: "
            "systemctl restart registryd (members register again by themselves)",
            ", ".join(sorted(changed)),
        )
    else:
        log.info("reload: the config is valid and unchanged")


async def serve(
    settings: RegistryOptions,
    secret: str,
    reload: Reloader | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the registry until SIGTERM/SIGINT, then shut down gracefully."""
    notifier = Notifier()
    # Before any slow start-up work: until then a SIGTERM kills without a goodbye.
    with termination_signals() as termination:
        await _serve(settings, secret, reload, notifier, termination, task_status)


async def _serve(
    settings: RegistryOptions,
    secret: str,
    reload: Reloader | None,
    notifier: Notifier,
    termination: Termination,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]],
) -> None:
    health = StoreHealth()
    serving = trio.Event()

    def status() -> str:
        scheme = "https" if settings.tls_cert else "http"
        line = f"serving on {scheme}://{settings.listen} (store: {_store_name(settings)})"
        return line if health.available else f"{line}; store unavailable: {health.reason}"

    async with trio.open_nursery() as signals:
        if reload is not None:
            load = reload

            async def on_hangup() -> None:
                # A SIGHUP during start-up is checked once serving, with the rest set up.
                await serving.wait()
                await check_reload(settings, secret, load)

            # Like SIGTERM, a SIGHUP must find its receiver open before any slow
            # start-up work: by default it ends the process.
            await signals.start(reload_on_hangup, on_hangup, notifier, status)
        store = WatchedStore(
            make_store(settings),
            health,
            name=_store_name(settings),
            on_change=lambda: notifier.status(status()),
        )
        try:
            await _run(settings, secret, store, notifier, termination, status, serving, task_status)
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()
        signals.cancel_scope.cancel()
    log.info("stopped")


async def _run(
    settings: RegistryOptions,
    secret: str,
    store: WatchedStore,
    notifier: Notifier,
    termination: Termination,
    status: Callable[[], str],
    serving: trio.Event,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]],
) -> None:
    metrics = RegistryMetrics()
    pace = Pace(
        peer_ttl=settings.peer_ttl,
        heartbeat_budget=settings.heartbeat_budget,
        max_heartbeat_interval=settings.max_heartbeat_interval,
    )
    app = RegistryApp(
        Signer(secret),
        store,
        metrics,
        limiter=FailureLimiter(),
        shedder=LoadShedder(settings.max_in_progress),
        newcomers=NewMemberLimiter(settings.new_member_burst, settings.new_member_rate),
        lookups=LookupLimiter(settings.lookup_burst, settings.lookup_rate),
        pace=pace,
        health=store.health,
        scheme="https" if settings.tls_cert else "http",
    )
    limits = Limits(
        max_body_bytes=settings.max_body,
        idle_timeout=settings.idle_timeout,
        request_timeout=settings.request_timeout,
    )
    server = HttpServer(app.handle, limits)
    listeners = await _open_listeners(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, listeners)
        # A tenth of the shortest ttl keeps /metrics and the logs close to the truth.
        period = min(1.0, settings.peer_ttl / 10)
        nursery.start_soon(_census_loop, store, metrics, pace, period)
        nursery.start_soon(notifier.keep_watchdog_fed)
        log.info(
            "%s, peer_ttl %g s, heartbeat_budget %g/s, max_heartbeat_interval %g s",
            status(),
            settings.peer_ttl,
            settings.heartbeat_budget,
            settings.max_heartbeat_interval,
        )
        notifier.ready(status())
        release_start_up_garbage()
        serving.set()
        task_status.started(listeners)
        signal_name = await termination.wait()
        log.info("stopping on %s", signal_name)
        notifier.stopping()
        await server.shutdown(SHUTDOWN_DEADLINE)
        nursery.cancel_scope.cancel()


def _store_name(settings: RegistryOptions) -> str:
    # A Redis URL may carry a password: show only its scheme and hosts.
    if settings.store == "memory":
        return "memory"
    from registryd.redis_connect import describe

    return describe(settings.store)
