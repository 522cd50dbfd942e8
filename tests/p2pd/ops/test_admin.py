"""`p2pd config init`, `registryd config init` and `p2pd install`'s drop-in."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from p2pcommon.lifecycle import ConfigError
from p2pcommon.settings import load_settings
from p2pd.config import PeerSettings
from p2pd.ops.admin import dropin_problem, folders_dropin
from registryd.config import RegistrySettings
from tests.support import SECRET, VENV_BIN


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def init_p2pd(
    tmp_path: Path, *extra: str, share: str = "/srv/p2pd/share"
) -> subprocess.CompletedProcess[str]:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    return run(
        str(VENV_BIN / "p2pd"), "config", "init",
        "--share", share, "--downloads", "/srv/p2pd/downloads",
        "--registry", "http://10.0.0.1:7000", "--registry", "https://registry.example:7000",
        "--secret-file", str(secret), "--output", str(tmp_path / "p2pd.toml"), *extra,
    )  # fmt: skip


def test_config_init_writes_a_commented_file_the_daemon_loads(tmp_path: Path) -> None:
    assert init_p2pd(tmp_path).returncode == 0
    text = (tmp_path / "p2pd.toml").read_text()
    settings, _ = load_settings(
        PeerSettings, explicit_path=str(tmp_path / "p2pd.toml"), default_path="/nonexistent"
    )
    assert settings.registries == ["http://10.0.0.1:7000", "https://registry.example:7000"]
    assert settings.resolve_secret() == SECRET
    # Every other key is there, commented out, as a reference.
    for key in ("upload_rate_limit", "advertise", "heartbeat_interval", "listen"):
        assert f"# {key} = " in text
    assert text.count("\n# ") > 10


def test_config_init_writes_relative_arguments_as_the_paths_they_meant(tmp_path: Path) -> None:
    # On the command line "share" is the working directory's; in the file it
    # would be the file's folder's: config init writes what was meant.
    (tmp_path / "secret").write_text(SECRET)
    output = tmp_path / "etc" / "p2pd.toml"
    result = subprocess.run(
        [
            str(VENV_BIN / "p2pd"), "config", "init", "--share", "share",
            "--downloads", "downloads", "--registry", "http://10.0.0.1:7000",
            "--secret-file", "secret", "--output", str(output),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    settings, _ = load_settings(PeerSettings, explicit_path=str(output), default_path="/x")
    assert settings.share_dir == tmp_path / "share"
    assert settings.download_dir == tmp_path / "downloads"
    assert settings.secret_file == tmp_path / "secret"
    assert settings.resolve_secret() == SECRET


def test_config_init_for_the_service_names_no_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The unit passes /etc/p2pd/secret as the credential 'secret': the config need not name it.
    output = tmp_path / "p2pd.toml"
    result = run(
        str(VENV_BIN / "p2pd"), "config", "init", "--share", "/srv/p2pd/share",
        "--downloads", "/srv/p2pd/downloads", "--registry", "http://10.0.0.1:7000",
        "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert "\nsecret_file" not in text and "systemd credential 'secret'" in text
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    settings, _ = load_settings(PeerSettings, explicit_path=str(output), default_path="/x")
    with pytest.raises(ConfigError, match="no shared secret"):
        settings.resolve_secret()
    (tmp_path / "secret").write_text(SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert settings.resolve_secret() == SECRET


def test_config_init_never_replaces_a_file_without_force(tmp_path: Path) -> None:
    assert init_p2pd(tmp_path).returncode == 0
    (tmp_path / "p2pd.toml").write_text("# mine\n")
    again = init_p2pd(tmp_path)
    assert again.returncode == 2
    assert "exists already" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "p2pd.toml").read_text() == "# mine\n"
    assert init_p2pd(tmp_path, "--force").returncode == 0


def test_config_init_names_a_bad_value(tmp_path: Path) -> None:
    bad = init_p2pd(tmp_path, "--listen", "no-port")
    assert bad.returncode == 2
    assert "key 'listen'" in bad.stderr
    assert not (tmp_path / "p2pd.toml").exists()


def test_registryd_config_init_is_valid_with_everything_commented(tmp_path: Path) -> None:
    output = tmp_path / "registryd.toml"
    done = run(str(VENV_BIN / "registryd"), "config", "init", "--store", "redis://localhost:6379/0",
               "--output", str(output))  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = tomllib.loads(output.read_text())
    assert data == {"store": "redis://localhost:6379/0"}
    RegistrySettings.model_validate(data)
    assert "# listen = " in output.read_text()


def settings_with(share: str, downloads: str, **extra: object) -> PeerSettings:
    return PeerSettings.model_validate(
        {"share_dir": share, "download_dir": downloads, "registries": ["http://r:1"],
         "secret": SECRET, **extra}
    )  # fmt: skip


def directives(settings: PeerSettings) -> list[str]:
    lines = folders_dropin(settings).splitlines()
    return [line for line in lines if not line.startswith(("#", "["))]


def test_dropin_opens_only_the_configured_folders() -> None:
    found = directives(settings_with("/srv/share", "/srv/downloads"))
    # The share needs nothing: ProtectSystem=strict leaves it readable.
    assert found == ["ReadWritePaths=-/srv/downloads"]


def test_dropin_binds_folders_under_home_into_an_empty_home() -> None:
    settings = settings_with(
        "/home/alice/Public",
        "/home/alice/My Downloads",
        state_dir="/srv/p2pd-state",
        control_socket="/run/p2pd/control.sock",
    )
    assert directives(settings) == [
        "ProtectHome=tmpfs",
        "BindReadOnlyPaths=-/home/alice/Public",
        'BindPaths="-/home/alice/My Downloads"',
        "ReadWritePaths=-/srv/p2pd-state",
    ]


def test_dropin_problem_says_when_the_installed_dropin_is_stale(tmp_path: Path) -> None:
    unit_dir = tmp_path / "p2pd.service.d"
    settings = settings_with("/srv/share", "/srv/downloads")
    assert "is missing" in (dropin_problem(settings, unit_dir) or "")
    unit_dir.mkdir()
    (unit_dir / "folders.conf").write_text(folders_dropin(settings))
    assert dropin_problem(settings, unit_dir) is None
    moved = settings_with("/srv/share", "/srv/elsewhere")
    assert "does not match" in (dropin_problem(moved, unit_dir) or "")
