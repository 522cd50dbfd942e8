"""`systemctl reload registryd`: the file is checked, the running registry kept."""

from __future__ import annotations

from pathlib import Path

from tests.support import reload, run_registryd


def test_reload_checks_the_config_and_keeps_serving(tmp_path: Path) -> None:
    with run_registryd(tmp_path) as registry:
        config = next(tmp_path.glob("registryd-*.toml"))
        config.write_text("peer_ttl = 90\n")
        reload(registry)
        assert "reload: peer_ttl changed; registryd applies its config at start" in registry.log()

        config.write_text("peer_ttl = -1\n")
        reload(registry)
        assert "reload: the config has an error; fix it before any restart" in registry.log()
        assert "key 'peer_ttl'" in registry.log()
        assert registry.process.poll() is None
