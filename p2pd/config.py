"""Reading p2pd's configuration: the TOML file and ``P2PD_*`` variables (README: Configuration).

The keys and their rules are ``p2pd.options``'; this module is imported by the
start-up child (``p2pd.prepare``) and the administration commands, never by the
running daemon.
"""

from __future__ import annotations

import os
from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from p2pcommon.lifecycle import ConfigError
from p2pcommon.settings import SharedSettings
from p2pd.options import PeerOptions

DEFAULT_PATH = "/etc/p2pd.toml"


class PeerSettings(SharedSettings, PeerOptions):
    model_config = SettingsConfigDict(env_prefix="P2PD_")
    # P2PD_SOCKET is p2pctl's; a shell that sets it may also start p2pd.
    foreign_env: ClassVar[frozenset[str]] = frozenset({"CONFIG", "SOCKET"})


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
