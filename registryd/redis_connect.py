"""A Redis client from the ``store`` URL: one server, or the primary that Sentinel names.

``redis://``, ``rediss://`` and ``unix://`` go to redis-py as they are.
``redis+sentinel://`` (``rediss+sentinel://`` over TLS) names Redis Sentinel
processes and a service::

    redis+sentinel://[user:password@]host:port[,host:port...]/service[/db][?options]

The client asks the sentinels where the service's primary is before each new
connection, so after a failover it follows the promoted replica: a
connection to the old primary fails (refused, reset, or READONLY once it
was demoted, which redis-py turns into a ConnectionError and a disconnect),
the request that used it gets a 503, and the next connection goes where the
sentinels now point.  An old primary that is still alive (a switch by
``SENTINEL FAILOVER``, or one that was cut off) keeps answering, and the
sentinels demote it only after ten seconds or more: whatever is written to it
meanwhile is lost.  So the client also asks the sentinels once a second, on
its next command, whether the primary moved, and drops its connections to
the old one if so.

Credentials: the URL's ``user:password`` authenticate to Redis (primary and
replicas).  Sentinels are asked without credentials unless the query gives
``sentinel_password`` (and ``sentinel_username``): a sentinel's
``requirepass`` is its own, usually different or absent.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.connection import Connection
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
SENTINEL_FORM = "redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]"
EXAMPLE = "redis+sentinel://sentinel-a:26379,sentinel-b:26379,sentinel-c:26379/mymaster"
DEFAULT_SENTINEL_PORT = 26379
#: Seconds between two questions to the sentinels about where the primary is.
PRIMARY_CHECK_INTERVAL = 1.0

_CREDENTIAL_OPTIONS = ("sentinel_username", "sentinel_password")
_TLS_OPTIONS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_CERT_REQS = ("none", "optional", "required")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    #: redis-py's ssl_* keyword arguments, for the sentinels and Redis alike.
    tls_options: dict[str, str | bool] = field(default_factory=dict)


def is_sentinel(url: str) -> bool:
    return url.startswith(("redis+sentinel://", "rediss+sentinel://"))


def check_url(url: str) -> None:
    """ValueError, saying what is wrong with an example, unless ``url`` can make a client.

    Never quotes the URL's password.
    """
    if not url.startswith(SCHEMES):
        raise ValueError(
            "must be 'memory' or a Redis URL (redis://, rediss://, unix://, or "
            f"redis+sentinel:// for a primary that Sentinel fails over), e.g. "
            f"redis://127.0.0.1:6379/0 or {EXAMPLE}"
        )
    if is_sentinel(url):
        parse_sentinel_url(url)
        return
    try:
        redis.ConnectionPool.from_url(url).disconnect()
    except ValueError as exc:
        raise ValueError(
            f"not a valid Redis URL: {exc} (e.g. redis://:password@127.0.0.1:6379/0)"
        ) from None


def parse_sentinel_url(url: str) -> SentinelTarget:
    scheme, _, rest = url.partition("://")
    if scheme not in ("redis+sentinel", "rediss+sentinel"):
        raise _bad("the scheme must be redis+sentinel:// or rediss+sentinel://")
    if "#" in rest:
        raise _bad("'#' must be percent-encoded (%23), in a password too")
    if "@" in rest and "@" not in rest.partition("?")[0].partition("/")[0]:
        # A password with a raw "/" or "?": the error must not quote any part of it.
        raise _bad("percent-encode '/', '?', '@' and '%' in the user name and password")
    rest, _, query = rest.partition("?")
    netloc, _, path_text = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    if not hosts:
        raise _bad("no sentinel address")
    sentinels = tuple(_address(text) for text in hosts.split(","))
    path = [unquote(piece) for piece in path_text.removesuffix("/").split("/")]
    if not path[0]:
        raise _bad("the service name is missing after the sentinel addresses")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise _bad("after the service name only a database number may follow (/0, /1...)")
    tls = scheme == "rediss+sentinel"
    options = _options(query, tls)
    credentials = {key: str(options.pop(key)) for key in _CREDENTIAL_OPTIONS if key in options}
    return SentinelTarget(
        sentinels=sentinels,
        service=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        tls=tls,
        username=username,
        password=password,
        sentinel_username=credentials.get("sentinel_username"),
        sentinel_password=credentials.get("sentinel_password"),
        tls_options=options,
    )


def connect(
    url: str, *, socket_connect_timeout: float, socket_timeout: float, retry: Retry
) -> redis.Redis:
    """A client for ``url`` (see the module's doc); connects on its first command."""
    if not is_sentinel(url):
        return redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=socket_connect_timeout,
            socket_timeout=socket_timeout,
            retry=retry,
        )
    target = parse_sentinel_url(url)
    # The same bounds for the sentinels: without them redis-py would retry a
    # dead sentinel with backoff inside the request that needs a new connection.
    common: dict[str, Any] = {
        "socket_connect_timeout": socket_connect_timeout,
        "socket_timeout": socket_timeout,
        "retry": retry,
        **({"ssl": True, **target.tls_options} if target.tls else {}),
    }
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={
            **common,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
        },
        **common,
    )
    client = sentinel.master_for(
        target.service,
        redis_class=_SentinelPrimary,
        connection_pool_class=_FollowingPool,
        db=target.db,
        username=target.username,
        password=target.password,
        decode_responses=True,
    )
    assert isinstance(client, _SentinelPrimary)
    client.sentinel_manager = sentinel
    return client


def describe(url: str) -> str:
    """``url`` without credentials or options, fit for a log line."""
    if is_sentinel(url):
        try:
            target = parse_sentinel_url(url)
        except ValueError:
            return url.partition("://")[0] + "://?"
        hosts = ",".join(_show_address(host, port) for host, port in target.sentinels)
        return f"{url.partition('://')[0]}://{hosts}/{target.service}"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{parts.hostname or ''}{f':{port}' if port else ''}"


class _SentinelPrimary(redis.Redis):
    """The service's primary; closing it also closes the connections to the sentinels."""

    sentinel_manager: Sentinel | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.sentinel_manager is not None:
                self.sentinel_manager.close()


class _FollowingPool(SentinelConnectionPool):
    """Drops its connections to an old primary within a second of the sentinels' switch."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._next_check = time.monotonic() + PRIMARY_CHECK_INTERVAL
        self._check_lock = threading.Lock()

    def get_connection(self, *args: Any, **kwargs: Any) -> Connection:
        now = time.monotonic()
        if now >= self._next_check and self._check_lock.acquire(blocking=False):
            try:
                self._next_check = now + PRIMARY_CHECK_INTERVAL
                # Best effort: when no sentinel answers, the connections in
                # hand are the best guess, and the command that follows
                # decides between an answer and a 503.  A new address
                # closes the idle connections to the old one, and those in
                # use are closed when they come back (owns_connection).
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    self.get_master_address()  # type: ignore[no-untyped-call]
            finally:
                self._check_lock.release()
        connection: Connection = super().get_connection(*args, **kwargs)
        return connection


def _address(text: str) -> tuple[str, int]:
    host, port_text = text, ""
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise _bad(f"sentinel address {text!r}: write an IPv6 address as [::1]:26379")
        port_text = after[1:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    if not host or (":" in host and not text.startswith("[")):
        raise _bad(f"sentinel address {text!r} is not host:port")
    if not port_text:
        return unquote(host), DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(f"sentinel address {text!r}: the port must be a number from 1 to 65535")
    return unquote(host), int(port_text)


def _show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _options(query: str, tls: bool) -> dict[str, str | bool]:
    known = _CREDENTIAL_OPTIONS + (_TLS_OPTIONS if tls else ())
    options: dict[str, str | bool] = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key not in known:
            hint = " (TLS options need rediss+sentinel://)" if key in _TLS_OPTIONS else ""
            raise _bad(f"unknown option {key!r}{hint}; known: {', '.join(known)}")
        value = values[-1]
        if key == "ssl_check_hostname":
            if value.lower() not in _TRUE + _FALSE:
                raise _bad("ssl_check_hostname must be true or false")
            options[key] = value.lower() in _TRUE
        elif key == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise _bad(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
        else:
            options[key] = value
    return options


def _bad(reason: str) -> ValueError:
    return ValueError(
        f"not a valid Sentinel URL: {reason}; expected {SENTINEL_FORM}, e.g. {EXAMPLE}"
    )
