"""p2pd's configuration and identity."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from p2pcommon.identity import peer_id_from_pem
from p2pcommon.lifecycle import ConfigError
from p2pcommon.settings import load_settings
from p2pd.config import PeerSettings, check_folders
from p2pd.tls.identity import load_or_create


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("P2PD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "share").mkdir(exist_ok=True)
    path = tmp_path / "p2pd.toml"
    path.write_text(
        f'share_dir = "{tmp_path / "share"}"\n'
        f'download_dir = "{tmp_path / "downloads"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        'registries = ["http://127.0.0.1:7000"]\n'
        'secret = "a-good-long-secret"\n' + extra
    )
    return path


def load(path: Path) -> PeerSettings:
    settings, _ = load_settings(PeerSettings, explicit_path=str(path), default_path="/x")
    return settings


def test_defaults_of_design(tmp_path: Path) -> None:
    settings = load(write_config(tmp_path))
    assert settings.listen == "0.0.0.0:7070"
    assert settings.control_socket == Path("/run/p2pd/control.sock")
    assert settings.heartbeat_interval == 10
    assert settings.upload_slots == 8
    assert settings.upload_rate_limit == 0
    assert settings.advertise is None
    assert settings.name  # the host name


def test_lists_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PD_REGISTRIES", "http://a:7000, http://b:7000")
    monkeypatch.setenv("P2PD_ADVERTISE", '["10.0.0.5:7070"]')
    monkeypatch.setenv("P2PD_SOCKET", "/tmp/p2pctl-only.sock")  # p2pctl's, tolerated
    settings = load(write_config(tmp_path))
    assert settings.registries == ["http://a:7000", "http://b:7000"]
    assert settings.advertise == ["10.0.0.5:7070"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("shared_dir = '/x'\n", "unknown key 'shared_dir'"),
        ("upload_slots = 0\n", "key 'upload_slots'"),
        ("listen = 'everywhere'\n", "key 'listen'"),
        ("advertise = ['no-port']\n", "key 'advertise'"),
        # What a registry takes in one registration: 8 addresses of 128 characters.
        (f"advertise = {[f'10.0.0.{i}:7070' for i in range(9)]}\n", "at most 8 addresses"),
        (f"advertise = ['{'h' * 124}:7070']\n", "at most 128 characters"),
        ("heartbeat_interval = 'often'\n", "key 'heartbeat_interval'"),
    ],
)
def test_bad_values_name_the_key_and_file(tmp_path: Path, extra: str, needle: str) -> None:
    path = write_config(tmp_path, extra)
    with pytest.raises(ConfigError, match=needle) as caught:
        load(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "url", ["127.0.0.1:7000", "http://127.0.0.1:99999", "http://127.0.0.1:0", "http://h:x"]
)
def test_bad_registry_url_names_the_key(tmp_path: Path, url: str) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("http://127.0.0.1:7000", url))
    with pytest.raises(ConfigError, match="key 'registries.0'"):
        load(path)


def test_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "p2pd.toml"
    path.write_text('secret = "a-good-long-secret"\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    for key in ("share_dir", "download_dir", "registries"):
        assert f"key '{key}' is required" in str(caught.value)


def test_missing_share_dir_says_which_path(tmp_path: Path) -> None:
    settings = load(write_config(tmp_path))
    (tmp_path / "share").rmdir()
    with pytest.raises(ConfigError, match=f"key 'share_dir': {tmp_path / 'share'} does not exist"):
        check_folders(settings)


def test_share_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    settings = load(write_config(tmp_path))
    (tmp_path / "share").rmdir()
    (tmp_path / "share").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        check_folders(settings)


def test_identity_is_created_private_and_reused(tmp_path: Path) -> None:
    first, new = load_or_create(tmp_path)
    assert new
    assert stat.S_IMODE((tmp_path / "identity.key").stat().st_mode) == 0o600
    assert first.id == peer_id_from_pem(first.cert_pem)
    assert len(first.id) == 52 and first.id == first.id.lower()
    assert len(first.short_id) == 7
    again, new_again = load_or_create(tmp_path)
    assert not new_again
    assert again.id == first.id


def test_half_an_identity_is_an_error_not_a_new_id(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / "identity.key").unlink()
    with pytest.raises(ValueError, match="identity.key is missing"):
        load_or_create(tmp_path)


# -- where the secret comes from --------------------------------------------------------


def config_naming(tmp_path: Path, secret_line: str) -> Path:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('secret = "a-good-long-secret"\n', secret_line))
    return path


def credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "secret").write_text(text + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))


def test_the_credential_wins_over_a_secret_file_the_service_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An upgraded host: the config still names /etc/p2pd/secret, now root's alone.
    unreadable = tmp_path / "root-only" / "secret"
    settings = load(config_naming(tmp_path, f'secret_file = "{unreadable}"\n'))
    credential(tmp_path, monkeypatch, "the-credential-secret")
    with caplog.at_level(logging.INFO, logger="p2pd"):
        assert settings.resolve_secret() == "the-credential-secret"
    assert caplog.messages == [
        "shared secret from the systemd credential 'secret'; "
        "'secret_file' in the config is not used under systemd"
    ]


def test_the_credential_serves_a_config_that_names_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load(config_naming(tmp_path, ""))
    credential(tmp_path, monkeypatch, "the-credential-secret")
    with caplog.at_level(logging.INFO, logger="p2pd"):
        assert settings.resolve_secret() == "the-credential-secret"
    assert caplog.messages == ["shared secret from systemd credential 'secret'"]


def test_without_the_credential_the_config_s_secret_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-the-secret-file\n")
    settings = load(config_naming(tmp_path, f'secret_file = "{secret}"\n'))
    with caplog.at_level(logging.INFO, logger="p2pd"):
        assert settings.resolve_secret() == "from-the-secret-file"
    assert caplog.messages == ["shared secret from key 'secret_file'"]
    # A credentials directory without 'secret' (another unit's credentials) is no credential.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "elsewhere"))
    assert settings.resolve_secret() == "from-the-secret-file"
    assert load(write_config(tmp_path)).resolve_secret() == "a-good-long-secret"


def test_secret_errors_name_their_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing"
    settings = load(config_naming(tmp_path, f'secret_file = "{missing}"\n'))
    with pytest.raises(ConfigError, match=f"key 'secret_file': cannot read {missing}"):
        settings.resolve_secret()
    with pytest.raises(ConfigError, match="no shared secret.*LoadCredential=secret:FILE"):
        load(config_naming(tmp_path, "")).resolve_secret()
    credential(tmp_path, monkeypatch, "short")
    with pytest.raises(ConfigError, match="systemd credential 'secret': .* too short"):
        settings.resolve_secret()
