"""registryd's start-up child: the configuration (p2pcommon.prepare).

``python -m registryd.prepare`` reads the configuration (pydantic-settings) and
resolves the secret; the registry gets the outcome, never those modules.
"""

from __future__ import annotations

import logging
import sys

from p2pcommon.lifecycle import ConfigError, StartupError
from p2pcommon.prepare import (
    DEADLINE,
    Answer,
    Child,
    child_main,
    config_error,
    daemon_arguments,
)
from registryd.options import RegistryOptions

DESCRIPTION = "The p2pd registry: who is online, never any file."


def prepared(child: Child) -> tuple[RegistryOptions, str] | int:
    """The options and secret ``child`` prepared, or its exit status when it
    answered nothing (``--help``, ``--version``, a usage error).

    ConfigError or StartupError when the start cannot go on.
    """
    answer = child.answer()
    if isinstance(answer, int):
        return answer
    return RegistryOptions.model_validate(answer["options"]), answer["secret"]


def reload_options(words: list[str]) -> tuple[RegistryOptions, str]:
    """The configuration read again (SIGHUP), or ConfigError saying why not."""
    try:
        options = prepared(Child("registryd.prepare", "reload", words, DEADLINE))
    except StartupError as exc:  # a ConfigError says it already
        raise ConfigError(str(exc)) from None
    if isinstance(options, int):
        raise ConfigError(f"reading the configuration ended with status {options}, no answer")
    return options


def _prepare(what: str, words: list[str]) -> Answer:
    # Imported here, in the child only: these are what the registry must not keep.
    from p2pcommon.settings import exposed_secret_file, load_settings
    from registryd.config import DEFAULT_PATH, RegistrySettings

    args = daemon_arguments(
        "registryd",
        DESCRIPTION,
        DEFAULT_PATH,
        words,
        [("config init [--store URL]", "write a first config file")],
    )
    try:
        settings, _ = load_settings(
            RegistrySettings, explicit_path=args.config, default_path=DEFAULT_PATH
        )
        secret = settings.resolve_secret()
    except ConfigError as exc:
        return config_error(str(exc))
    if what == "start" and (warning := exposed_secret_file(settings)) is not None:
        logging.getLogger("registryd").warning("%s", warning)
    # The inline secret's value travels once, resolved, as "secret".
    return {"options": settings.model_dump(mode="json", exclude={"secret"}), "secret": secret}


if __name__ == "__main__":
    sys.exit(child_main(_prepare))
