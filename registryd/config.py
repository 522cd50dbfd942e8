"""Reading registryd's configuration: the TOML file and ``REGISTRYD_*`` variables.

The keys and their rules are ``registryd.options``'; this module is imported by
the start-up child (``registryd.prepare``) and ``registryd config init``,
never by the running registry.
"""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from p2pcommon.settings import SharedSettings
from registryd.options import RegistryOptions

DEFAULT_PATH = "/etc/registryd.toml"


class RegistrySettings(SharedSettings, RegistryOptions):
    model_config = SettingsConfigDict(env_prefix="REGISTRYD_")
