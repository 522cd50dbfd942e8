"""p2pd's configuration (README: Configuration)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from p2pcommon.models import split_host_port
from p2pcommon.settings import ConfigError, SharedSettings, check_listen

DEFAULT_PATH = "/etc/p2pd.toml"


def _list_from_env(value: Any) -> Any:
    """Environment values arrive as text: accept a JSON list or comma-separated items."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _check_addresses(values: list[str] | None) -> list[str] | None:
    for value in values or ():
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


class PeerSettings(SharedSettings):
    model_config = SettingsConfigDict(env_prefix="P2PD_", extra="forbid", validate_default=True)
    # P2PD_SOCKET is p2pctl's; a shell that sets it may also start p2pd.
    foreign_env: ClassVar[frozenset[str]] = frozenset({"CONFIG", "SOCKET"})

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
        NoDecode,
        BeforeValidator(_list_from_env),
        AfterValidator(_check_addresses),
    ] = None
    registries: Annotated[
        list[RegistryUrl], NoDecode, BeforeValidator(_list_from_env), Field(min_length=1)
    ]
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


def check_folders(settings: PeerSettings) -> None:
    """Refuse folders the daemon cannot use, saying which path and why."""
    share = settings.share_dir
    if not share.exists():
        raise ConfigError(f"key 'share_dir': {share} does not exist: create it or fix the path")
    if not share.is_dir():
        raise ConfigError(f"key 'share_dir': {share} is not a directory")
    if not os.access(share, os.R_OK | os.X_OK):
        raise ConfigError(
            f"key 'share_dir': {share} is not readable by this user (uid {os.getuid()}): "
            "fix its permissions or run p2pd as a user that may read it"
        )
    for key, path in (("download_dir", settings.download_dir), ("state_dir", settings.state_dir)):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"key '{key}': cannot create {path}: {exc.strerror}") from None
        if not path.is_dir():
            raise ConfigError(f"key '{key}': {path} is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(
                f"key '{key}': {path} is not writable by this user (uid {os.getuid()})"
            )


#: Keys a running daemon takes over on SIGHUP (`systemctl reload p2pd`);
#: a change to any other key waits for a restart.
LIVE_KEYS = frozenset({"name", "advertise", "heartbeat_interval", "upload_rate_limit"})
