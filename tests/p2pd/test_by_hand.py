"""The README's by-hand path, followed literally: a secret made with `openssl rand`
(mode 0644 under the usual umask), config files naming paths relative to
themselves, started from another directory, then `p2pctl doctor` without
--config. Real registryd, p2pd and p2pctl, as subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import SECRET, VENV_BIN, daemon_process, free_port


def clean_env(*prefixes: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith((*prefixes, "NOTIFY_"))}


def secret_file(folder: Path, mode: int) -> Path:
    path = folder / "secret"
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    return path


def warnings_about(log: str, path: Path) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and str(path) in line]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder under /tmp: a control socket's path must stay short."""
    folder = Path(tempfile.mkdtemp(prefix="byhand-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
def test_registryd_warns_once_about_a_secret_file_others_can_read(
    tmp_path: Path, mode: int
) -> None:
    secret = secret_file(tmp_path, mode)
    config = tmp_path / "registryd.toml"
    # Relative to the config file, while registryd runs in another directory.
    config.write_text(f'listen = "127.0.0.1:{free_port()}"\nsecret_file = "secret"\n')
    log_path = tmp_path / "registryd.log"
    command = [str(VENV_BIN / "registryd"), "--config", str(config)]
    with daemon_process(command, clean_env("REGISTRYD_"), log_path):
        pass
    warned = warnings_about(log_path.read_text(), secret)
    if mode == 0o600:
        assert warned == []
    else:
        (line,) = warned
        assert f"mode {mode:04o}" in line and line.endswith(f"fix: chmod 600 {secret}")


def write_peer_config(folder: Path, socket_path: Path, extra: str = "") -> Path:
    """The README's peer config, its folders and secret named relative to it."""
    for name in ("share", "downloads", "state"):
        (folder / name).mkdir(exist_ok=True)
    config = folder / "p2pd.toml"
    config.write_text(
        'share_dir = "share"\n'
        'download_dir = "downloads"\n'
        'state_dir = "state"\n'
        f'control_socket = "{socket_path}"\n'
        f'listen = "127.0.0.1:{free_port()}"\n'
        'registries = ["http://127.0.0.1:9"]\n'
        'secret_file = "secret"\n' + extra
    )
    return config


def p2pctl(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "p2pctl"), "--socket", str(socket_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env("P2PD_"),
    )


def test_a_peer_by_hand_reads_its_paths_from_its_config_s_folder_and_doctor_finds_it(
    short_dir: Path, tmp_path: Path
) -> None:
    secret = secret_file(short_dir, 0o644)  # as `openssl rand -hex 16 > secret` makes it
    socket_path = short_dir / "control.sock"
    config = write_peer_config(short_dir, socket_path)
    log_path = tmp_path / "p2pd.log"
    command = [str(VENV_BIN / "p2pd"), "--config", str(config)]
    with daemon_process(command, clean_env("P2PD_"), log_path, ready_timeout=60):
        (warning,) = warnings_about(log_path.read_text(), secret)
        assert warning.endswith(f"fix: chmod 600 {secret}")
        status = json.loads(p2pctl(socket_path, "--json", "status").stdout)
        assert status["share_dir"] == str(short_dir / "share")
        assert status["download_dir"] == str(short_dir / "downloads")
        assert status["config"] == str(config)
        # No --config, no P2PD_CONFIG: doctor checks the running daemon's file, saying so.
        doctor = p2pctl(socket_path, "--json", "doctor")
        (checked,) = [r for r in json.loads(doctor.stdout) if r["check"] == "config"]
        assert checked["status"] == "ok", checked
        assert checked["message"].startswith(
            f"{config} (the config of the p2pd answering on {socket_path}) is valid"
        )
        (secret_check,) = [r for r in json.loads(doctor.stdout) if r["check"] == "secret"]
        assert secret_check["status"] == "problem"
        assert f"sudo chmod 600 {secret}" in secret_check["fix"]


def test_a_secret_file_that_is_not_there_is_named_by_its_absolute_path_and_key(
    short_dir: Path,
) -> None:
    config = write_peer_config(short_dir, short_dir / "control.sock")
    result = subprocess.run(
        [str(VENV_BIN / "p2pd"), "--config", "p2pd.toml"],
        cwd=short_dir,  # a relative --config, as the README runs it
        env=clean_env("P2PD_"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"key 'secret_file': cannot read {short_dir / 'secret'}: No such file" in result.stderr
    assert config.exists()


@pytest.mark.parametrize(
    ("program", "commands"),
    [("p2pd", ["p2pd config init", "p2pd install"]), ("registryd", ["registryd config init"])],
)
def test_help_lists_the_commands_the_readme_uses(program: str, commands: list[str]) -> None:
    result = subprocess.run(
        [str(VENV_BIN / program), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for command in commands:
        assert command in result.stdout, result.stdout
