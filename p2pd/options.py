"""p2pd's configuration keys and their rules (README: Configuration).

What the running daemon holds; ``p2pd.config`` reads them from the file and
the environment (in the start-up child, ``p2pd.prepare``).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, field_validator

from p2pcommon.models import MAX_ADDRESS_LENGTH, MAX_ADDRESSES, split_host_port
from p2pcommon.options import SharedOptions, check_listen


def _list_from_env(value: Any) -> Any:
    """Environment values arrive as text: accept a JSON list or comma-separated items."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _check_addresses(values: list[str] | None) -> list[str] | None:
    # What a registry accepts in one registration (docs/protocol.md §3.2).
    if values is not None and len(values) > MAX_ADDRESSES:
        raise ValueError(f"at most {MAX_ADDRESSES} addresses")
    for value in values or ():
        if len(value) > MAX_ADDRESS_LENGTH:
            raise ValueError(
                f"{value[:40]!r}…: an address has at most {MAX_ADDRESS_LENGTH} characters"
            )
        split_host_port(value)
    return values


def _check_metrics_listen(value: str) -> str:
    """Empty (the default) keeps the metrics server off; anything else is ``host:port``."""
    value = value.strip()
    return check_listen(value) if value else ""


def _check_registry(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from None
    if parts.port == 0:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
    return url


RegistryUrl = Annotated[str, AfterValidator(_check_registry)]


class PeerOptions(SharedOptions):
    """p2pd's keys (README: Configuration), as the running daemon holds them."""

    name: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        default_factory=socket.gethostname
    )
    share_dir: Path
    download_dir: Path
    state_dir: Path = Path("/var/lib/p2pd")
    control_socket: Path = Path("/run/p2pd/control.sock")
    listen: Annotated[str, AfterValidator(check_listen)] = "0.0.0.0:7070"
    advertise: Annotated[
        list[str] | None,
        BeforeValidator(_list_from_env),
        AfterValidator(_check_addresses),
    ] = None
    registries: Annotated[list[RegistryUrl], BeforeValidator(_list_from_env), Field(min_length=1)]
    heartbeat_interval: Annotated[float, Field(gt=0, le=3600)] = 10.0
    upload_slots: Annotated[int, Field(ge=1, le=1024)] = 8
    upload_rate_limit: Annotated[int, Field(ge=0)] = 0
    #: Where Prometheus scrapes GET /metrics (plain HTTP: keep it on a local
    #: address); empty, the default, serves no metrics.
    metrics_listen: Annotated[str, AfterValidator(_check_metrics_listen)] = ""
    stable_after: Annotated[float, Field(ge=0, le=3600)] = 2.0

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must not contain control characters")
        return value

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen)[1]


#: Keys a running daemon takes over on SIGHUP (`systemctl reload p2pd`);
#: a change to any other key waits for a restart.
LIVE_KEYS = frozenset({"name", "advertise", "heartbeat_interval", "upload_rate_limit"})
