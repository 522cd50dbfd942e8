"""p2pd's start-up child: the configuration and the identity (p2pcommon.prepare).

``python -m p2pd.prepare`` reads the configuration (pydantic-settings), resolves
the secret, checks the folders and, at start, loads or creates the identity
and the network CA (cryptography, when ``network-ca.crt`` does not already
record them: a first start, a new secret, a replaced identity).  The daemon
gets the outcome, never those modules: a first start idles like any later one.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from p2pcommon.lifecycle import ConfigError, StartupError
from p2pcommon.prepare import (
    Answer,
    Child,
    child_main,
    config_error,
    daemon_arguments,
    run_child,
    startup_error,
)
from p2pd.options import PeerOptions
from p2pd.tls.identity import Identity, NetworkAnchor

log = logging.getLogger("p2pd")

DESCRIPTION = "The p2pd peer daemon: shares a folder with the members."
#: What `p2pd --help` lists beside running the daemon (p2pd.ops.admin runs them).
ADMIN_COMMANDS = (
    ("config init --share DIR --downloads DIR --registry URL", "write a first config file"),
    ("install [--config FILE]", "let the systemd service reach the configured folders"),
)


@dataclass(frozen=True)
class Prepared:
    """What the daemon starts with."""

    options: PeerOptions
    secret: str
    identity: Identity
    network: NetworkAnchor
    #: The config file it was started with (None: the environment alone), for status.
    config_path: Path | None = None


def prepared(child: Child) -> Prepared | int:
    """The configuration and identity ``child`` (``p2pd.prepare start``) prepared, or
    its exit status when it answered nothing (``--help``, ``--version``, a usage error).

    ConfigError or StartupError when the start cannot go on.
    """
    answer = child.answer()
    if isinstance(answer, int):
        return answer
    identity = answer["identity"]
    return Prepared(
        PeerOptions.model_validate(answer["options"]),
        answer["secret"],
        Identity(
            Path(identity["key_path"]),
            Path(identity["cert_path"]),
            identity["cert_pem"],
            identity["id"],
        ),
        NetworkAnchor(answer["network_ca"]),
        Path(answer["config"]) if answer.get("config") else None,
    )


def reload_options(words: list[str]) -> tuple[PeerOptions, str]:
    """The configuration read again (SIGHUP), or ConfigError saying why not."""
    try:
        answer = run_child("p2pd.prepare", "reload", words)
    except StartupError as exc:  # a ConfigError says it already
        raise ConfigError(str(exc)) from None
    if isinstance(answer, int):
        raise ConfigError(f"reading the configuration ended with status {answer}, no answer")
    return PeerOptions.model_validate(answer["options"]), answer["secret"]


def _prepare(what: str, words: list[str]) -> Answer:
    # Imported here, in the child only: these are what the daemon must not keep.
    from p2pcommon.settings import exposed_secret_file, load_settings
    from p2pd.config import DEFAULT_PATH, PeerSettings, check_folders
    from p2pd.tls.identity import load_for_network

    args = daemon_arguments("p2pd", DESCRIPTION, DEFAULT_PATH, words, ADMIN_COMMANDS)
    try:
        settings, config_path = load_settings(
            PeerSettings, explicit_path=args.config, default_path=DEFAULT_PATH
        )
        secret = settings.resolve_secret()
        check_folders(settings)
    except ConfigError as exc:
        return config_error(str(exc))
    answer: Answer = {
        # The inline secret's value travels once, resolved, as "secret".
        "options": settings.model_dump(mode="json", exclude={"secret"}),
        "secret": secret,
    }
    if what != "start":
        return answer
    if (warning := exposed_secret_file(settings)) is not None:
        log.warning("%s", warning)
    answer["config"] = None if config_path is None else str(config_path.absolute())
    try:
        identity, new, network = load_for_network(settings.state_dir, secret)
    except (ValueError, OSError) as exc:
        return startup_error(f"identity in {settings.state_dir}: {exc}")
    log.info(
        "%s identity %s (%s)",
        "created" if new else "using",
        identity.short_id,
        identity.cert_path,
    )
    answer["identity"] = {
        "key_path": str(identity.key_path),
        "cert_path": str(identity.cert_path),
        "cert_pem": identity.cert_pem,
        "id": identity.id,
    }
    answer["network_ca"] = network.cert_pem
    return answer


if __name__ == "__main__":
    sys.exit(child_main(_prepare))
