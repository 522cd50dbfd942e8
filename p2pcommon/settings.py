"""Loading TOML + environment configuration with errors that name the key.

Both daemons follow the same rules (README, Configuration): a TOML file
(``--config``, ``<PREFIX>CONFIG`` or the default path), every key
overridable by ``<PREFIX><KEY>``, unknown keys and bad values refused with a
message naming the key and where it came from.  pydantic-settings does the
parsing; this module chooses the file, orders the sources (environment over
file) and words the errors.  The keys and their rules are the options
classes' (``p2pcommon.options``); a daemon imports this module only in its
start-up child (``p2pcommon.prepare``), never while it runs.
"""

from __future__ import annotations

import logging
import os
import stat
import tomllib
import types
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from p2pcommon.lifecycle import ConfigError
from p2pcommon.options import SharedOptions
from p2pcommon.signing.signer import MIN_SECRET_LENGTH


class SharedSettings(BaseSettings, SharedOptions):
    """Reads the keys of a daemon's options class (a subclass lists it second)."""

    # Subclasses set env_prefix, e.g. "P2PD_".  Environment values stay text:
    # list keys take a JSON list or comma-separated items (their validators).
    model_config = SettingsConfigDict(extra="forbid", validate_default=True, enable_decoding=False)

    #: Variables with the prefix that are not keys but are meant for other tools.
    foreign_env: ClassVar[frozenset[str]] = frozenset({"CONFIG"})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; the environment wins over them.
        return (env_settings, init_settings)

    def secret_source(self) -> tuple[str, Path | None]:
        """Where the secret comes from, as errors name it, and its file (None: inline).

        The systemd credential wins over the config: under the unit only the
        credential is readable (the file behind it is root's alone), and a
        config written before the units passed it may still name that file.
        """
        credential = credential_file()
        if credential is not None:
            return f"systemd credential '{CREDENTIAL}'", credential
        if self.secret is not None:
            return "key 'secret'", None
        if self.secret_file is not None:
            return "key 'secret_file'", self.secret_file
        prefix = env_prefix(type(self))
        raise ConfigError(
            "no shared secret: set 'secret' or 'secret_file' in the config file "
            f"(or {prefix}SECRET / {prefix}SECRET_FILE), or run under systemd with the "
            f"credential '{CREDENTIAL}' (LoadCredential={CREDENTIAL}:FILE); all members and "
            "registries must use the same secret"
        )

    def resolve_secret(self) -> str:
        """The shared secret: the systemd credential if present, else the config's."""
        source, path = self.secret_source()
        if path is None:
            inline = self.secret.get_secret_value() if self.secret is not None else ""
            secret = checked_secret(source, inline)
        else:
            secret = read_secret(source, path)
        named = [key for key in ("secret", "secret_file") if getattr(self, key) is not None]
        if source.startswith("systemd") and named:
            # Said at every load: whoever edits that key should learn it has no effect here.
            log_for(type(self)).info(
                "shared secret from the %s; '%s' in the config is not used under systemd",
                source,
                named[0],
            )
        else:
            log_for(type(self)).info("shared secret from %s", source)
        return secret


#: The name of the systemd credential that carries the shared secret (LoadCredential=).
CREDENTIAL = "secret"


def credential_file() -> Path | None:
    """``$CREDENTIALS_DIRECTORY/secret`` when systemd passed the credential, else None."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / CREDENTIAL
    return path if path.exists() else None


def read_secret(source: str, path: Path) -> str:
    """The secret in ``path``; ConfigError naming ``source`` when unreadable or too short."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # The absolute path: a relative one (from a variable) leaves the reader
        # guessing which working directory it was taken against.
        raise ConfigError(f"{source}: cannot read {path.absolute()}: {_reason(exc)}") from None
    return checked_secret(source, text)


def exposed_secret_file(settings: SharedSettings) -> str | None:
    """A warning when the secret's file may be read by others than its owner, else None.

    Whoever reads the secret can sign registry requests as a member; a file
    made with the default umask (``openssl rand -hex 16 > secret``) is 0644.
    The systemd credential is systemd's to protect, an inline secret the
    config file's (``p2pctl doctor`` checks both).
    """
    try:
        source, path = settings.secret_source()
    except ConfigError:
        return None
    if path is None or source.startswith("systemd"):
        return None
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None  # reading it failed or will fail, with its own message
    if not mode & 0o077:
        return None
    who = "everyone" if mode & 0o007 else "its group"
    shown = path.absolute()
    return (
        f"the secret file {shown} ({source}) can be read by {who} (mode {mode:04o}): whoever "
        f"reads it can sign registry requests as a member; fix: chmod 600 {shown}"
    )


def checked_secret(source: str, secret: str) -> str:
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{source}: the shared secret is {'empty' if not secret else 'too short'} "
            f"({len(secret)} characters); use at least {MIN_SECRET_LENGTH}, "
            "for example the output of `openssl rand -hex 16`"
        )
    return secret


def log_for(cls: type[SharedSettings]) -> logging.Logger:
    """The daemon's own logger ("p2pd", "registryd"), named after its prefix."""
    return logging.getLogger(env_prefix(cls).removesuffix("_").lower() or __name__)


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


Settings = TypeVar("Settings", bound=SharedSettings)


def env_prefix(cls: type[SharedSettings]) -> str:
    return str(cls.model_config.get("env_prefix", ""))


def load_settings(
    cls: type[Settings], *, explicit_path: str | None, default_path: str
) -> tuple[Settings, Path | None]:
    """Read the config file and environment into ``cls``; ConfigError on any problem.

    ``explicit_path`` (from ``--config``) wins over ``<PREFIX>CONFIG``; both
    must exist.  The default path may be absent: then the environment alone
    configures the daemon.
    """
    prefix = env_prefix(cls)
    unknown = sorted(
        name
        for name in os.environ
        if name.startswith(prefix)
        and name.removeprefix(prefix) not in cls.foreign_env
        and name.removeprefix(prefix).lower() not in cls.model_fields
    )
    if unknown:
        known = ", ".join(f"{prefix}{k.upper()}" for k in cls.model_fields)
        raise ConfigError(f"unknown environment variable {unknown[0]} (known: {known})")
    chosen = explicit_path or os.environ.get(f"{prefix}CONFIG")
    path = Path(chosen or default_path)
    data: dict[str, Any] = {}
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        if chosen:
            raise ConfigError(f"config file {path} does not exist") from None
        path_used: Path | None = None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {_reason(exc)}") from None
    else:
        data = _parse_toml(path, raw)
        path_used = path
    if path_used is not None:
        data = _paths_from(path_used.absolute().parent, cls, data)
    try:
        settings = cls(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, cls, path_used)) from None
    return settings, path_used


#: A config file is a few kilobytes; one larger than this is not a config file.
MAX_CONFIG_BYTES = 1024 * 1024


def _parse_toml(path: Path, raw: bytes) -> dict[str, Any]:
    """The TOML document in ``raw`` (the file ``path``); ConfigError naming what is wrong.

    TOML is UTF-8 by definition: any other encoding (a file saved as Latin-1,
    a stray byte) is said with the byte and where it is, not as a traceback.
    """
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path} is larger than {MAX_CONFIG_BYTES // 1024} KiB: is it the config file?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        shown = path.absolute()
        raise ConfigError(
            f"{shown} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}, "
            f"line {line}): TOML is UTF-8, save the file as UTF-8 (from Latin-1: "
            f"iconv -f latin1 -t utf-8 {shown} > {shown}.new, then move it into place)"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _paths_from(folder: Path, cls: type[SharedSettings], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each relative path key taken against ``folder``, the config file's.

    A config file that says ``secret_file = "secret"`` means the file beside
    it, whatever the directory the daemon was started from. Paths from the
    environment stay as given: the shell that sets them has its own directory.
    """
    resolved = dict(data)
    for key, value in data.items():
        field = cls.model_fields.get(key)
        if field is None or not isinstance(value, str) or not value:
            continue
        if _is_path(field.annotation) and not Path(value).is_absolute():
            resolved[key] = str(folder / value)
    return resolved


def _is_path(annotation: Any) -> bool:
    """``Path``, or ``Path | None``: the keys that name a file or folder."""
    if annotation is Path:
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_is_path(arg) for arg in get_args(annotation))
    return False


def _describe(exc: ValidationError, cls: type[SharedSettings], path: Path | None) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"])
        env_name = f"{env_prefix(cls)}{key.upper()}"
        where = env_name if env_name in os.environ else (str(path) if path else "defaults")
        if error["type"] == "extra_forbidden":
            known = ", ".join(sorted(cls.model_fields))
            lines.append(f"{where}: unknown key '{key}' (known keys: {known})")
        elif error["type"] == "missing":
            lines.append(
                f"{where}: key '{key}' is required: set it in the config file or as {env_name}"
            )
        elif not key:
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        else:
            value = error.get("input")
            hidden = "secret" in key or isinstance(value, dict) or _has_credentials(value)
            shown = "" if hidden else f" (got {value!r})"
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: key '{key}': {message}{shown}")
    return "; ".join(lines)


def _has_credentials(value: object) -> bool:
    """A URL with a user or password (``redis://:pw@host``, ``?sentinel_password=``): not to
    be echoed in a log."""
    if not isinstance(value, str) or "://" not in value:
        return False
    # Any "@": a password may itself hold "/" or "?" that would end the authority early.
    return "@" in value or "password=" in value
