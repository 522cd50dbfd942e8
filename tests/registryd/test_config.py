"""registryd's configuration: file, environment, secret sources, and the errors' wording."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pcommon.lifecycle import ConfigError
from p2pcommon.settings import load_settings
from registryd.config import RegistrySettings
from registryd.main import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("REGISTRYD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def load(path: Path) -> RegistrySettings:
    settings, _ = load_settings(RegistrySettings, explicit_path=str(path), default_path="/x")
    return settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registryd.toml"
    path.write_text(text)
    return path


def test_defaults_from_design(tmp_path: Path) -> None:
    settings = load(write(tmp_path, 'secret = "0123456789abcdef"\n'))
    assert settings.listen == "0.0.0.0:7000"
    assert settings.peer_ttl == 30
    assert (settings.heartbeat_budget, settings.max_heartbeat_interval) == (200, 60)
    assert (settings.lookup_burst, settings.lookup_rate) == (300, 100)
    assert settings.store == "memory"
    assert settings.resolve_secret() == "0123456789abcdef"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRYD_PEER_TTL", "12")
    settings = load(write(tmp_path, "peer_ttl = 90\n"))
    assert settings.peer_ttl == 12


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRYD_CONFIG", str(write(tmp_path, 'listen = "127.0.0.1:9000"\n')))
    settings, path = load_settings(RegistrySettings, explicit_path=None, default_path="/x")
    assert settings.listen == "127.0.0.1:9000"
    assert path == tmp_path / "registryd.toml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("peer_tll = 30\n", "unknown key 'peer_tll'"),
        ('peer_ttl = "soon"\n', "key 'peer_ttl'"),
        ("peer_ttl = -1\n", "key 'peer_ttl'"),
        ("heartbeat_budget = 0\n", "key 'heartbeat_budget'"),
        ('max_heartbeat_interval = "long"\n', "key 'max_heartbeat_interval'"),
        ("lookup_rate = -1\n", "key 'lookup_rate'"),
        ('listen = "nowhere"\n', "key 'listen'"),
        ('listen = "127.0.0.1:99999"\n', "key 'listen'"),
        ('store = "mysql://x"\n', "key 'store'"),
        ('tls_cert = "/etc/c.pem"\n', "'tls_cert' and 'tls_key'"),
        ('secret = "abcdefghij"\nsecret_file = "/s"\n', "only one of 'secret' and 'secret_file'"),
        ("peer_ttl = [\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")) as caught:
        load(path)
    assert str(path) in str(caught.value)


def test_unknown_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRYD_PEERTTL", "3")
    with pytest.raises(ConfigError, match="REGISTRYD_PEERTTL"):
        load_settings(RegistrySettings, explicit_path=None, default_path="/nonexistent")


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRYD_PEER_TTL", "zero")
    with pytest.raises(ConfigError, match="REGISTRYD_PEER_TTL: key 'peer_ttl'"):
        load_settings(RegistrySettings, explicit_path=None, default_path="/nonexistent")


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")


def test_secret_from_file_is_stripped(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-a-file-secret\n")
    settings = load(write(tmp_path, f'secret_file = "{tmp_path / "secret"}"\n'))
    assert settings.resolve_secret() == "from-a-file-secret"


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    settings = load(write(tmp_path, f'secret_file = "{tmp_path / "missing"}"\n'))
    with pytest.raises(ConfigError, match="key 'secret_file': cannot read"):
        settings.resolve_secret()


def test_secret_from_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").write_text("credential-secret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load(write(tmp_path, "")).resolve_secret() == "credential-secret"


@pytest.mark.parametrize("secret", ["", "short"])
def test_empty_or_short_secret_is_refused(tmp_path: Path, secret: str) -> None:
    settings = load(write(tmp_path, f'secret = "{secret}"\n'))
    with pytest.raises(ConfigError, match="key 'secret'.*at least 8"):
        settings.resolve_secret()


def test_no_secret_at_all_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no shared secret"):
        load(write(tmp_path, "")).resolve_secret()


def test_main_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'secret = "abcdefghijkl"\npeer_ttl = "x"\n')
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("registryd: configuration error:")
    assert "key 'peer_ttl'" in err
    assert "abcdefghijkl" not in err


def test_secret_value_never_appears_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "secret = 12345678901\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "12345678901" not in str(caught.value)


def test_a_bad_store_url_is_named_without_echoing_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REGISTRYD_STORE", "redis://:hunter2@host:notaport/0")
    with pytest.raises(ConfigError) as caught:
        load_settings(RegistrySettings, explicit_path=None, default_path="/nonexistent")
    assert "REGISTRYD_STORE" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_relative_paths_in_the_file_are_taken_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "secret").write_text("the-secret-beside-the-config\n")
    config = write(tmp_path / "etc", 'secret_file = "secret"\ntls_cert = "tls/c.pem"\n')
    config.write_text(config.read_text() + 'tls_key = "/abs/k.pem"\n')
    monkeypatch.chdir(tmp_path)  # elsewhere: the daemon's working directory does not count
    settings = load(Path("etc/registryd.toml"))
    assert settings.secret_file == tmp_path / "etc" / "secret"
    assert settings.resolve_secret() == "the-secret-beside-the-config"
    assert (settings.tls_cert, settings.tls_key) == (tmp_path / "etc/tls/c.pem", Path("/abs/k.pem"))
    # A variable's path is the shell's: relative to the working directory, as given.
    monkeypatch.setenv("REGISTRYD_SECRET_FILE", "elsewhere/secret")
    settings = load(config)
    assert settings.secret_file == Path("elsewhere/secret")
    with pytest.raises(ConfigError, match=f"key 'secret_file': cannot read {tmp_path}/elsewhere"):
        settings.resolve_secret()


def test_a_secret_file_others_may_read_is_a_warning_with_its_fix(tmp_path: Path) -> None:
    from p2pcommon.settings import exposed_secret_file

    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef\n")
    settings = load(write(tmp_path, f'secret_file = "{secret}"\n'))
    for mode, who in ((0o604, "everyone"), (0o640, "its group")):
        secret.chmod(mode)
        assert exposed_secret_file(settings) == (
            f"the secret file {secret} (key 'secret_file') can be read by {who} "
            f"(mode {mode:04o}): whoever reads it can sign registry requests as a member; "
            f"fix: chmod 600 {secret}"
        )
    secret.chmod(0o600)
    assert exposed_secret_file(settings) is None
    assert exposed_secret_file(load(write(tmp_path, 'secret = "0123456789abcdef"\n'))) is None
