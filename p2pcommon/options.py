"""The configuration a running daemon holds: validated values, not how they were read.

``p2pcommon.settings`` reads them (a TOML file and the environment, by
pydantic-settings) in a short child process at start and at each reload
(``p2pcommon.prepare``); the daemon gets them as JSON and validates them into
these plain pydantic models.  So the daemon never imports pydantic-settings
(nor the asyncio, argparse and dotenv it brings, ≈ 4 MiB that would stay
resident for the daemon's whole life).  Each daemon's settings class derives
from its options class: the keys and their rules are written once.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from p2pcommon.models import split_host_port


class SharedOptions(BaseModel):
    """Keys and rules common to registryd and p2pd."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    #: The inline secret; a running daemon's options never hold it (it gets the
    #: resolved secret on its own), only whether the file named one.
    secret: SecretStr | None = None
    secret_file: Path | None = None

    @model_validator(mode="after")
    def _one_secret_source(self) -> SharedOptions:
        if self.secret is not None and self.secret_file is not None:
            raise ValueError("set only one of 'secret' and 'secret_file'")
        return self


def changed_keys(
    old: SharedOptions, old_secret: str, new: SharedOptions, new_secret: str
) -> set[str]:
    """What a reload would change: the keys whose values differ, and "secret"
    when the secret's text did (a secret_file may keep its path, not its content)."""
    before, after = old.model_dump(exclude={"secret"}), new.model_dump(exclude={"secret"})
    changed = {key for key in before if before[key] != after[key]}
    return changed | {"secret"} if new_secret != old_secret else changed


def check_listen(value: str) -> str:
    split_host_port(value)
    return value
