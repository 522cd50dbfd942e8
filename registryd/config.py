"""registryd's configuration (README: Configuration)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from p2pcommon.settings import SharedSettings, check_listen

DEFAULT_PATH = "/etc/registryd.toml"


class RegistrySettings(SharedSettings):
    model_config = SettingsConfigDict(
        env_prefix="REGISTRYD_", extra="forbid", validate_default=True
    )

    listen: Annotated[str, AfterValidator(check_listen)] = "0.0.0.0:7000"
    peer_ttl: Annotated[float, Field(gt=0, le=86400)] = 30.0
    store: str = "memory"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Seconds a kept-alive connection may stay silent before it is closed.
    idle_timeout: Annotated[float, Field(gt=0)] = 30.0
    #: Seconds a client has to send a whole request once it started.
    request_timeout: Annotated[float, Field(gt=0)] = 10.0
    #: Largest request body accepted, in bytes.
    max_body: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value == "memory":
            return value
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be 'memory' or a redis:// URL")
        from redis import ConnectionPool

        # A malformed URL is a configuration error at start, not a traceback later.
        try:
            ConnectionPool.from_url(value).disconnect()
        except ValueError as exc:
            raise ValueError(f"not a valid Redis URL: {exc}") from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> RegistrySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both 'tls_cert' and 'tls_key', or neither")
        return self
