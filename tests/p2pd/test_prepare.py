"""p2pd's start-up child (p2pd.prepare): what a user sees when the start cannot go on."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from p2pcommon.lifecycle import ConfigError, StartupError
from p2pcommon.prepare import run_child
from p2pd.tls.identity import NETWORK_FILE, load_for_network
from tests.support import SECRET, VENV_BIN, free_port, p2pd_config


def start(config: Path) -> subprocess.CompletedProcess[str]:
    """The real p2pd, expected to stop before serving."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PD_", "NOTIFY_"))}
    return subprocess.run(
        [str(VENV_BIN / "p2pd"), "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def configured(tmp_path: Path) -> tuple[Path, Path]:
    """A config (its registry need not exist: the start stops earlier) and its state_dir."""
    config, _, _, state, _ = p2pd_config(tmp_path, "alice", ["http://127.0.0.1:9"], free_port())
    return config, state


def assert_says_what_to_do(result: subprocess.CompletedProcess[str], path: Path) -> None:
    assert result.returncode == 1, result.stderr
    assert f"p2pd: identity in {path.parent}: {path} is not " in result.stderr
    assert "remove both identity.key and identity.crt to become a new member" in result.stderr
    assert "Traceback" not in result.stderr and "PEM lib" not in result.stderr


@pytest.mark.parametrize("recorded", [True, False], ids=["restart", "network-ca.crt lost"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_key_says_which_file_and_what_to_do(
    tmp_path: Path, damage: str, recorded: bool
) -> None:
    config, state = configured(tmp_path)
    load_for_network(state, SECRET)  # a first start made them
    key = state / "identity.key"
    text = key.read_text()
    key.write_text({"garbage": "not a key\n", "truncated": text[:100], "empty": ""}[damage])
    if not recorded:  # the slow path: the CA derived again, the certificate checked
        (state / NETWORK_FILE).unlink()
    assert_says_what_to_do(start(config), key)


def test_another_identitys_key_is_named_as_such(tmp_path: Path) -> None:
    config, state = configured(tmp_path)
    load_for_network(state, SECRET)
    other, _, _ = load_for_network(tmp_path / "other", SECRET)
    (state / "identity.key").write_bytes(other.key_path.read_bytes())
    result = start(config)
    assert_says_what_to_do(result, state / "identity.key")
    assert f"is not the key of {state / 'identity.crt'}" in result.stderr


def test_a_damaged_certificate_says_which_file_and_what_to_do(tmp_path: Path) -> None:
    config, state = configured(tmp_path)
    load_for_network(state, SECRET)
    (state / "identity.crt").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
    assert_says_what_to_do(start(config), state / "identity.crt")


def test_version_help_and_usage_come_from_the_child_as_before() -> None:
    version = subprocess.run(
        [str(VENV_BIN / "p2pd"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.startswith("p2pd ")
    usage = subprocess.run(
        [str(VENV_BIN / "p2pd"), "--no-such-option"], capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 2 and "unrecognized arguments" in usage.stderr


def test_a_child_that_does_not_answer_is_killed_at_its_deadline(tmp_path: Path) -> None:
    # A config "file" that never yields its content (a FIFO nobody writes),
    # as a hung network file system would.
    config, _ = configured(tmp_path)
    config.unlink()
    os.mkfifo(config)
    began = time.monotonic()
    with pytest.raises(StartupError, match="did not finish within 2 s") as caught:
        run_child("p2pd.prepare", "start", ["--config", str(config)], deadline=2)
    assert not isinstance(caught.value, ConfigError)  # not the configuration's fault
    assert time.monotonic() - began < 30
    # Killed and reaped: nothing of ours still has the FIFO open for reading.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                assert not any(os.readlink(fd) == str(config) for fd in (entry / "fd").iterdir()), (
                    f"process {entry.name} still reads {config}"
                )
            except (PermissionError, FileNotFoundError):  # not ours, or gone
                continue
