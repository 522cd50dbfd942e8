"""registryd's configuration keys and their rules (README: Configuration).

What the running registry holds; ``registryd.config`` reads them from the file
and the environment (in the start-up child, ``registryd.prepare``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from p2pcommon.options import SharedOptions, check_listen
from registryd.guards import (
    DEFAULT_MAX_IN_PROGRESS,
    LOOKUP_BURST,
    LOOKUP_RATE,
    NEW_MEMBER_BURST,
    NEW_MEMBER_RATE,
)
from registryd.pace import HEARTBEAT_BUDGET, MAX_HEARTBEAT_INTERVAL, PEER_TTL


class RegistryOptions(SharedOptions):
    """registryd's keys, as the running registry holds them."""

    listen: Annotated[str, AfterValidator(check_listen)] = "0.0.0.0:7000"
    #: A lease while membership is small; the interval is a third of it (registryd.pace).
    peer_ttl: Annotated[float, Field(gt=0, le=86400)] = PEER_TTL
    #: Heartbeats a second one process is given: the interval lengthens past it.
    heartbeat_budget: Annotated[float, Field(gt=0)] = HEARTBEAT_BUDGET
    #: The longest interval advised however many members (before its jitter).
    max_heartbeat_interval: Annotated[float, Field(gt=0, le=86400)] = MAX_HEARTBEAT_INTERVAL
    store: str = "memory"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Seconds a kept-alive connection may stay silent before it is closed.
    idle_timeout: Annotated[float, Field(gt=0)] = 30.0
    #: Seconds a client has to send a whole request once it started.
    request_timeout: Annotated[float, Field(gt=0)] = 10.0
    #: Largest request body accepted, in bytes.
    max_body: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    #: Requests one process works on at once; past it, 503 with Retry-After.
    max_in_progress: Annotated[int, Field(ge=1)] = DEFAULT_MAX_IN_PROGRESS
    #: New ids one source address (IPv6: /64) may register at once, and then per
    #: second; 0 turns the limit off (behind a proxy every peer has its address).
    new_member_burst: Annotated[int, Field(ge=1)] = NEW_MEMBER_BURST
    new_member_rate: Annotated[float, Field(ge=0)] = NEW_MEMBER_RATE
    #: Lookups one source address (IPv6: /64) may make at once, then per second; 0: off.
    lookup_burst: Annotated[int, Field(ge=1)] = LOOKUP_BURST
    lookup_rate: Annotated[float, Field(ge=0)] = LOOKUP_RATE
    #: SO_REUSEPORT: several processes (one per core, on one Redis) share ``listen``.
    reuse_port: bool = False

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value == "memory":
            return value
        from registryd.redis_connect import check_url

        # A malformed URL is a configuration error at start, not a traceback later.
        check_url(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> RegistryOptions:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both 'tls_cert' and 'tls_key', or neither")
        return self

    @model_validator(mode="after")
    def _shared_port_needs_a_shared_store(self) -> RegistryOptions:
        if self.reuse_port and self.store == "memory":
            raise ValueError(
                "'reuse_port = true' needs a shared store: with 'store = \"memory\"' each "
                "process sharing the port would have its own members; set 'store' to a "
                "redis:// URL, or 'reuse_port = false'"
            )
        return self
