"""`p2pctl doctor`: the real command against a real registryd, and its pure parts."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pd.config import PeerSettings
from p2pd.ops.doctor import (
    READ,
    SEARCH,
    WRITE,
    FolderAccess,
    UserIds,
    access_of,
    check_config,
    check_inotify,
    check_listen,
    check_secret,
    classify_skew,
    clock_result,
    may_access,
    server_time,
    suggested_watch_limit,
)
from tests.support import SECRET, VENV_BIN, RunningRegistry, free_port, run_registryd

#: Where the service is installed, `p2pd install` has run for another config.
INSTALLED_HERE = Path("/etc/systemd/system/p2pd.service").exists()
SERVICE_HERE = "problem" if INSTALLED_HERE else "skipped"
#: There, the service uses /etc/p2pd/secret, not the secret in the test's config.
SECRET_HERE = "warning" if INSTALLED_HERE else "ok"
CHECKS = ["config", "secret", "folders", "service", "inotify", "registry", "clock", "listen"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registryd(tmp_path_factory.mktemp("registry")) as running:
        yield running


def write_config(
    folder: Path, registries: list[str], *, port: int | None = None, extra: str = ""
) -> Path:
    for name in ("share", "downloads", "state"):
        (folder / name).mkdir(exist_ok=True)
    config = folder / "p2pd.toml"
    config.write_text(
        f'share_dir = "{folder / "share"}"\n'
        f'download_dir = "{folder / "downloads"}"\n'
        f'state_dir = "{folder / "state"}"\n'
        f'control_socket = "{folder / "control.sock"}"\n'
        f'listen = "127.0.0.1:{port or free_port()}"\n'
        f"registries = {json.dumps(registries)}\n" + extra
    )
    config.chmod(0o600)  # it may hold the secret inline
    return config


def doctor(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """The real p2pctl, checking as this user, with no daemon on its socket."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("P2PD_") and k != "CREDENTIALS_DIRECTORY"
    }
    command = [str(VENV_BIN / "p2pctl"), "--socket", str(config.parent / "none.sock"), *options]
    command += ["doctor", "--config", str(config), "--user", getpass.getuser()]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)


def doctor_json(config: Path) -> tuple[int, dict[str, dict[str, str]]]:
    """Exit status and the results by check name."""
    result = doctor(config, "--json")
    results: list[dict[str, str]] = json.loads(result.stdout)
    assert [r["check"] for r in results] == CHECKS, results
    return result.returncode, {r["check"]: r for r in results}


def test_a_good_install_passes_every_check(registry: RunningRegistry, tmp_path: Path) -> None:
    config = write_config(tmp_path, [registry.url], extra=f'secret = "{SECRET}"\n')
    status, results = doctor_json(config)
    assert status == 0
    # This machine runs the tests, not the service: the unit check has nothing to see.
    expected = {**dict.fromkeys(CHECKS, "ok"), "service": SERVICE_HERE, "secret": SECRET_HERE}
    assert {name: r["status"] for name, r in results.items()} == expected
    assert "accepted our signature" in results["registry"]["message"]
    assert "Date header" in results["clock"]["message"]

    human = doctor(config)
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    marks = {"ok": "ok", "skipped": "skip", "warning": "WARN"}
    assert [line.split()[:2] for line in lines] == [[marks[expected[n]], n] for n in CHECKS]


def test_an_unknown_key_is_named_and_the_rest_skipped(tmp_path: Path) -> None:
    extra = f'secret = "{SECRET}"\ncolour = "blue"\n'
    config = write_config(tmp_path, ["http://127.0.0.1:1"], extra=extra)
    status, results = doctor_json(config)
    assert status == 1
    assert results["config"]["status"] == "problem"
    assert "unknown key 'colour'" in results["config"]["message"]
    assert str(config) in results["config"]["fix"]
    assert {results[name]["status"] for name in CHECKS[1:]} == {"skipped"}


def test_another_secret_is_refused_but_the_clock_still_compares(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    config = write_config(tmp_path, [registry.url], extra='secret = "not-the-network-secret"\n')
    status, results = doctor_json(config)
    assert status == 1
    refused = results["registry"]
    assert refused["status"] == "problem"
    assert "refused our signature (bad signature)" in refused["message"]
    assert "secret" in refused["fix"] and "timedatectl" in refused["fix"]
    assert results["clock"]["status"] == "ok"  # the refusal carries a Date header too


def test_an_unreachable_registry_is_a_problem(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, [url], extra=f'secret = "{SECRET}"\n')
    status, results = doctor_json(config)
    assert status == 1
    assert results["registry"]["status"] == "problem"
    assert f"{url} is unreachable" in results["registry"]["message"]
    assert "systemctl status registryd" in results["registry"]["fix"]
    assert results["clock"]["status"] == "skipped"


def test_a_listen_port_held_by_another_program(registry: RunningRegistry, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(tmp_path, [registry.url], port=port, extra=f'secret = "{SECRET}"\n')
        status, results = doctor_json(config)
    assert status == 1
    assert results["listen"]["status"] == "problem"
    assert "in use" in results["listen"]["message"]
    assert f"sudo ss -ltnp 'sport = :{port}'" in results["listen"]["fix"]


def test_a_missing_share_dir_is_named(registry: RunningRegistry, tmp_path: Path) -> None:
    config = write_config(tmp_path, [registry.url], extra=f'secret = "{SECRET}"\n')
    (tmp_path / "share").rmdir()
    status, results = doctor_json(config)
    assert status == 1
    assert results["folders"]["status"] == "problem"
    assert f"share_dir {tmp_path / 'share'} does not exist" in results["folders"]["message"]
    assert "sudo mkdir -p" in results["folders"]["fix"]
    assert results["inotify"]["status"] == "skipped"


def test_a_secret_file_open_to_the_group_is_a_problem_with_its_fix(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    # What an install before the secret went root-only left: 0640, group p2pd.
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o640)
    config = write_config(tmp_path, [registry.url], extra=f'secret_file = "{secret}"\n')
    status, results = doctor_json(config)
    assert status == 1
    assert results["secret"]["status"] == "problem"
    assert f"the secret {secret} is open to the group" in results["secret"]["message"]
    assert "(mode 0640)" in results["secret"]["message"]
    assert results["secret"]["fix"] == f"sudo chmod 600 {secret}"
    # The secret is still usable: the other checks go on.
    assert results["registry"]["status"] == "ok"
    secret.chmod(0o600)
    assert doctor_json(config)[1]["secret"]["status"] == SECRET_HERE


def test_a_usage_error_exits_2() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "p2pctl"), "doctor", "--no-such-option"], capture_output=True, text=True
    )
    assert result.returncode == 2


# -- the pure parts ----------------------------------------------------------------


SOMEONE = UserIds("someone", uid=5000, gids=frozenset({5000, 6000}))


@pytest.mark.parametrize(
    ("mode", "owner", "group", "want", "allowed"),
    [
        (0o700, 5000, 0, READ | WRITE | SEARCH, True),  # the owner's bits
        (0o070, 5000, 6000, READ, False),  # the owner's class decides, not the group's
        (0o750, 0, 6000, READ | SEARCH, True),  # a supplementary group
        (0o750, 0, 6000, WRITE, False),
        (0o755, 0, 0, READ | SEARCH, True),  # others
        (0o750, 0, 0, SEARCH, False),
        (0o705, 0, 6000, READ, False),  # a member gets the group's bits, not the others'
    ],
)
def test_permission_decision_uses_exactly_one_class(
    mode: int, owner: int, group: int, want: int, allowed: bool
) -> None:
    assert may_access(mode, owner, group, SOMEONE, want) is allowed
    assert may_access(0, owner, group, UserIds("root", 0, frozenset({0})), want)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user may enter, as are its parents (unlike pytest's tmp_path)."""
    folder = Path(tempfile.mkdtemp(prefix="doctor-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_folders_are_judged_for_the_service_user_with_exact_fixes(open_dir: Path) -> None:
    # The folders belong to this test's user; "someone" is only among the others.
    share, downloads, parent = open_dir / "share", open_dir / "downloads", open_dir / "locked"
    for folder in (share, downloads, parent):
        folder.mkdir(mode=0o755)
    folders = FolderAccess(access_of(SOMEONE), "someone", "p2pd", "/etc/p2pd.toml")
    assert list(folders.share_problems(share)) == []
    assert [why for why, _ in folders.writable_problems("download_dir", downloads)] == [
        f"someone cannot write to download_dir {downloads}"
    ]
    share.chmod(0o700)
    assert list(folders.share_problems(share)) == [
        (
            f"someone cannot read share_dir {share}",
            f"sudo chgrp -R p2pd {share} && sudo chmod -R g+rX {share}",
        )
    ]
    parent.chmod(0o700)
    (parent / "state").mkdir()
    assert list(folders.writable_problems("state_dir", parent / "state")) == [
        (
            f"someone cannot enter {parent}, a parent of state_dir {parent / 'state'}",
            f"sudo chmod o+x {parent}",
        )
    ]
    downloads.chmod(0o777)  # the missing folder below it can be created
    assert list(folders.writable_problems("download_dir", downloads / "new" / "deeper")) == []
    missing = open_dir / "absent"
    assert list(folders.writable_problems("download_dir", missing)) == [
        (
            f"download_dir {missing} does not exist and someone may not create it in {open_dir}",
            f"sudo mkdir -p {missing} && sudo chown someone:p2pd {missing}",
        )
    ]


def test_inotify_compares_the_share_s_folders_with_the_limit(tmp_path: Path) -> None:
    share, outside = tmp_path / "share", tmp_path / "outside"
    for index in range(9):
        (share / f"d{index}").mkdir(parents=True)
        (outside / f"o{index}").mkdir(parents=True)
    (share / "link").symlink_to(outside)  # not followed: not watched
    limit = tmp_path / "max_user_watches"

    def check(value: str) -> tuple[str, str, str]:
        limit.write_text(value)
        result = check_inotify(share, limit)
        return result.status, result.message, result.fix

    status, message, fix = check("100\n")
    assert (status, fix) == ("ok", "")
    assert "10 folder(s)" in message and "100" in message
    assert check("12")[0] == "warning"  # 10 folders > 80 % of 12
    status, message, fix = check("9")
    assert status == "problem" and "rescan" in message
    assert fix == (
        "sudo sysctl fs.inotify.max_user_watches=30 && echo "
        "'fs.inotify.max_user_watches=30' | sudo tee /etc/sysctl.d/90-p2pd.conf"
    )
    assert check_inotify(share, tmp_path / "absent").status == "skipped"


def test_suggested_watch_limit_is_round_and_above_twice_the_need() -> None:
    assert [suggested_watch_limit(n) for n in (10, 9000, 60_000, 8192)] == [
        30,
        20_000,
        200_000,
        20_000,
    ]


def test_clock_skew_classification() -> None:
    assert [classify_skew(s) for s in (0, 30, -30, 30.5, -45, 60, 61, -61)] == [
        "ok",
        "ok",
        "ok",
        "warning",
        "warning",
        "warning",
        "problem",
        "problem",
    ]
    behind = clock_result("http://r:7000", 75, "Date header")
    assert behind.status == "problem"
    assert behind.message.startswith("this clock is 75 s behind http://r:7000")
    assert "timedatectl set-ntp true" in behind.fix
    assert "ahead of" in clock_result("http://r:7000", -40, "Date header").message
    assert clock_result("http://r:7000", 2, "Date header").fix == ""


def test_server_time_from_date_else_from_the_signature() -> None:
    # Names as the client gives them: lowercased.
    dated = {"date": "Thu, 01 Jan 1970 00:01:40 GMT"}
    assert server_time(dated) == (100.5, "Date header")
    signed = {"signature-input": 'sig=("@status");created=1700000000;nonce="n"'}
    assert server_time(signed) == (1_700_000_000.5, "signature's created time")
    assert server_time({"date": "garbage"}) is None


def test_listen_is_ok_when_our_daemon_holds_the_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        asked: list[str] = []

        def daemon(path: str) -> dict[str, Any] | None:
            asked.append(path)
            return {"listen": f"0.0.0.0:{port}"} if path == "/run/p2pd/control.sock" else None

        sockets = ["/tmp/other.sock", "/run/p2pd/control.sock"]
        result = check_listen(f"127.0.0.1:{port}", sockets, daemon, "/etc/p2pd.toml")
    assert (result.status, result.message) == (
        "ok",
        f"p2pd is running and listening on 0.0.0.0:{port}",
    )
    assert asked == sockets


# -- the secret: root's and the services' only -----------------------------------------


def settings_with(tmp_path: Path, **keys: object) -> PeerSettings:
    (tmp_path / "share").mkdir(exist_ok=True)
    base = {
        "share_dir": tmp_path / "share",
        "download_dir": tmp_path / "downloads",
        "registries": ["http://127.0.0.1:7000"],
    }
    return PeerSettings.model_validate({**base, **keys})


@pytest.fixture
def no_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("P2PD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def private_file(path: Path, mode: int = 0o600) -> Path:
    path.write_text(SECRET)
    path.chmod(mode)
    return path


@pytest.mark.usefixtures("no_credential")
def test_secret_modes_open_to_group_or_others_are_problems(tmp_path: Path) -> None:
    secret = private_file(tmp_path / "secret")
    settings = settings_with(tmp_path, secret_file=secret)
    service = tmp_path / "service-secret"
    result = check_secret(settings, "/etc/p2pd.toml", service, installed=False)
    assert (result.status, result.message) == ("ok", f"{secret} is readable by its owner only")
    for mode, who in ((0o640, "the group"), (0o604, "everyone"), (0o644, "the group")):
        secret.chmod(mode)
        result = check_secret(settings, "/etc/p2pd.toml", service, installed=False)
        assert result.status == "problem"
        assert f"open to {who}" in result.message and f"(mode {mode:04o})" in result.message
        assert result.fix == f"sudo chmod 600 {secret}"


@pytest.mark.usefixtures("no_credential")
def test_an_inline_secret_in_a_readable_config_is_a_problem(tmp_path: Path) -> None:
    config = tmp_path / "p2pd.toml"
    config.write_text("")
    config.chmod(0o644)
    settings = settings_with(tmp_path, secret=SECRET)
    result = check_secret(settings, str(config), tmp_path / "none", installed=False)
    assert result.status == "problem"
    assert f"{config}, which holds the secret inline, is open to the group" in result.message
    assert "and everyone (mode 0644)" in result.message
    assert "delete 'secret'" in result.fix


@pytest.mark.usefixtures("no_credential")
def test_under_the_installed_unit_the_credential_file_is_what_counts(tmp_path: Path) -> None:
    service = tmp_path / "etc-p2pd-secret"
    # The config names no secret (as `config init` writes it now): the unit's file is used.
    settings = settings_with(tmp_path)
    private_file(service, 0o640)
    result = check_secret(settings, "/etc/p2pd.toml", service, installed=True)
    assert (result.status, result.fix) == ("problem", f"sudo chmod 600 {service}")
    service.chmod(0o600)
    assert check_secret(settings, "/etc/p2pd.toml", service, installed=True).status == "ok"
    # A config that names another file: the service ignores it, and doctor says so.
    other = private_file(tmp_path / "other")
    named = settings_with(tmp_path, secret_file=other)
    result = check_secret(named, "/etc/p2pd.toml", service, installed=True)
    assert result.status == "warning"
    assert f"the service uses {service}" in result.message and "'secret_file'" in result.message
    # An upgraded host whose config still names the unit's own file: nothing to say.
    upgraded = settings_with(tmp_path, secret_file=service)
    assert check_secret(upgraded, "/etc/p2pd.toml", service, installed=True).status == "ok"
    # Without the file the unit cannot start at all.
    service.unlink()
    result = check_secret(named, "/etc/p2pd.toml", service, installed=True)
    assert result.status == "problem" and "p2pd.service cannot start" in result.message


def test_the_credential_itself_needs_no_mode_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_file(tmp_path / "secret", 0o644)  # systemd's own directory guards it
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    result = check_secret(settings_with(tmp_path), "/x", tmp_path / "none", installed=True)
    assert result.status == "ok" and "systemd credential" in result.message


@pytest.mark.usefixtures("no_credential")
def test_config_without_a_secret_is_checked_with_the_service_s_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, ["http://127.0.0.1:7000"])
    service = private_file(tmp_path / "service-secret")
    result, settings, secret = check_config(str(config), service)
    assert result.status == "ok" and settings is not None and secret == SECRET
    service.unlink()
    result, _, secret = check_config(str(config), service)
    assert result.status == "problem" and secret is None
    assert "no shared secret" in result.message and str(service) in result.message
