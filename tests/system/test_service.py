"""The user's way in, under a real systemd: install, enable, use, crash, stall, stop.

A minimal Debian boots in systemd-nspawn; our wheels, built here, are
installed inside by `make install` exactly as an administrator would run it.
The tests run in file order on one booted container, as one story.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.container import Container, cached_root, why_not_runnable

REPO = Path(__file__).resolve().parents[2]

reason = why_not_runnable()
pytestmark = [
    pytest.mark.skipif(reason is not None, reason=reason or ""),
    # The first test also builds the wheels and, once per machine, the root file system.
    pytest.mark.timeout(1800),
]
#: `make install` builds a venv inside: minutes on a loaded machine.
INSTALL_TIMEOUT = 900

# Short enough that a stalled loop is caught within the test, long enough
# that a loaded CI machine does not trip it by accident.
TEST_WATCHDOG = "[Service]\nWatchdogSec=6s\n"

LIST_MEMBERS = """
import sys, trio
from p2pcommon.registry_client import RegistryClient
async def main():
    secret = open("/etc/p2pd/secret").read().strip()
    async with RegistryClient(["http://127.0.0.1:7000"], secret) as client:
        # Pages come from the store (the whole list may be a second old).
        members, after = [], None
        while True:
            page, after = await client.members_page(after, 1000, certs=False)
            members += page
            if after is None:
                break
        print("\\n".join(m.id for m in members))
trio.run(main)
"""


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    base = cached_root()
    work = tmp_path_factory.mktemp("nspawn")
    wheels = work / "wheels"
    # Built here, as `make wheelhouse` builds them: the container has no network.
    # The wheelhouse holds the whole lock for any CPython >= 3.11 on Linux, so
    # also what Debian 12's Python (3.11.2) needs and this one does not.
    subprocess.run(
        [sys.executable, str(REPO / "scripts/lock.py"), "wheelhouse", str(wheels)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    # The source as a fresh clone would have it (no venv, no caches).
    source = work / "src"
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    root = work / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(root)], check=True)
    box = Container(root, {source: "/src", wheels: "/wheels"})
    try:
        box.boot()
        yield box
    finally:
        box.poweroff()
        shutil.rmtree(root, ignore_errors=True)


def main_pid(box: Container) -> str:
    return box.show("p2pd", "MainPID")["MainPID"]


def is_active(box: Container, unit: str = "p2pd") -> bool:
    return box.run("systemctl", "is-active", unit, check=False).stdout.strip() == "active"


def status_as_alice(box: Container) -> dict[str, object]:
    result = box.run("p2pctl", "--json", "status", user="alice", check=False)
    assert result.returncode == 0, result.stderr
    status: dict[str, object] = json.loads(result.stdout)
    return status


def registered(box: Container) -> bool:
    result = box.run("p2pctl", "--json", "status", check=False)
    return result.returncode == 0 and json.loads(result.stdout)["registered"] is True


def journal_says(box: Container, text: str, unit: str = "p2pd") -> bool:
    # journald takes the daemon's lines asynchronously: poll, never read once.
    return text in box.run("journalctl", "-u", unit, "-o", "cat", "--no-pager").stdout


def owner_and_mode(box: Container, path: str) -> str:
    return box.run("stat", "-c", "%U:%G %a", path).stdout.strip()


def install(box: Container) -> str:
    return box.run(
        "make", "-C", "/src", "install", "WHEELHOUSE=/wheels", timeout=INSTALL_TIMEOUT
    ).stdout


def test_make_install_writes_config_units_and_account(container: Container) -> None:
    # The source is mounted read-only: installing must not write into it.
    out = install(container)
    assert "systemctl enable --now" in out
    for path in ("/etc/p2pd.toml", "/etc/registryd.toml", "/etc/p2pd/secret"):
        container.run("test", "-s", path)
    container.run("getent", "group", "p2pd")
    # p2pctl is the launcher without site (p2pctl/launcher.py), not pip's script.
    launcher = container.run("head", "-n1", "/opt/p2pd/bin/p2pctl").stdout
    assert launcher == "#!/opt/p2pd/bin/python -IS\n"
    # The secret is root's alone; the unit passes it on, so the config need not name it.
    assert owner_and_mode(container, "/etc/p2pd/secret") == "root:root 600"
    assert owner_and_mode(container, "/etc/p2pd") == "root:root 700"
    assert "\nsecret_file" not in container.run("cat", "/etc/p2pd.toml").stdout
    # A second run upgrades in place and keeps the administrator's files.
    container.run("sh", "-c", "echo '# edited' >> /etc/p2pd.toml")
    again = install(container)
    assert "# edited" in container.run("cat", "/etc/p2pd.toml").stdout
    assert "root's alone" not in again  # nothing to tighten
    # Installed, the units are clean in systemd's own eyes.
    for unit in ("p2pd.service", "registryd.service"):
        verify = container.run("systemd-analyze", "verify", f"/etc/systemd/system/{unit}")
        assert verify.stdout + verify.stderr == "", f"{unit}: {verify.stderr}"
    dropin = container.run("cat", "/etc/systemd/system/p2pd.service.d/folders.conf").stdout
    assert "ReadWritePaths=-/srv/p2pd/downloads" in dropin


def test_enable_now_serves_and_group_members_use_p2pctl(container: Container) -> None:
    container.run(
        "install",
        "-D",
        "-m",
        "0644",
        "/dev/stdin",
        "/etc/systemd/system/p2pd.service.d/test-watchdog.conf",
        input=TEST_WATCHDOG,
    )
    container.run("sh", "-c", "echo hello > /srv/p2pd/share/hello.txt")
    container.run("useradd", "--create-home", "--groups", "p2pd", "alice")
    container.run("systemctl", "daemon-reload")
    container.run("systemctl", "enable", "--now", "registryd", "p2pd")
    assert is_active(container, "registryd")
    assert is_active(container, "p2pd")
    container.wait_for("p2pd to register", lambda: registered(container))
    # Registered, so signed with the secret, which p2pd (user p2pd) could only get this way.
    container.wait_for(
        "p2pd to say where its secret came from",
        lambda: journal_says(container, "shared secret from systemd credential 'secret'"),
    )
    # A file just written is offered once it has been stable for stable_after (2 s).
    container.wait_for(
        "hello.txt to be offered", lambda: status_as_alice(container)["shared_files"] == 1
    )
    # The group p2pd gives the control socket, and not the secret.
    peek = container.run("cat", "/etc/p2pd/secret", user="alice", check=False)
    assert peek.returncode != 0 and "Permission denied" in peek.stderr
    doctor_as_alice = container.run("p2pctl", "doctor", user="alice", check=False)
    assert doctor_as_alice.returncode == 1
    assert "sudo p2pctl doctor" in doctor_as_alice.stdout
    assert "usermod" not in doctor_as_alice.stdout  # joining the group no longer helps
    # A user outside the group is refused, and told how to get in.
    container.run("useradd", "bob")
    denied = container.run("p2pctl", "status", user="bob", check=False)
    assert denied.returncode == 3
    assert "usermod -aG p2pd" in denied.stderr
    doctor_as_bob = container.run("p2pctl", "doctor", user="bob", check=False)
    assert doctor_as_bob.returncode == 1
    assert "sudo p2pctl doctor" in doctor_as_bob.stdout  # the secret is not bob's to read
    # The health check finds nothing to fix in a fresh install.
    doctor = container.run("p2pctl", "doctor", check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "/etc/p2pd/secret is readable by its owner only" in doctor.stdout
    # READY=1 came with a one-line STATUS= summary; it follows the registration.
    container.wait_for(
        "the STATUS= summary",
        lambda: all(
            word in container.show("p2pd", "StatusText")["StatusText"]
            for word in ("registered", "shared files")
        ),
    )
    # journald adds the timestamps; ours would be doubled.
    container.wait_for(
        "the log line",
        lambda: any(
            line.startswith("INFO p2pd: serving")
            for line in container.run("journalctl", "-u", "p2pd", "-o", "cat").stdout.splitlines()
        ),
    )


def test_killed_daemon_is_restarted(container: Container) -> None:
    before = main_pid(container)
    container.run("sh", "-c", f"kill -KILL {before}")  # minbase has no procps
    container.wait_for(
        "a new p2pd", lambda: is_active(container) and main_pid(container) not in ("0", before)
    )
    container.wait_for("p2pd to register again", lambda: registered(container))
    assert int(container.show("p2pd", "NRestarts")["NRestarts"]) >= 1


def test_stalled_loop_is_restarted_by_the_watchdog(container: Container) -> None:
    before = main_pid(container)
    restarts = int(container.show("p2pd", "NRestarts")["NRestarts"])
    container.run("sh", "-c", f"kill -STOP {before}")
    container.wait_for(
        "the watchdog restart",
        lambda: int(container.show("p2pd", "NRestarts")["NRestarts"]) > restarts,
        timeout=90,
    )
    container.wait_for("p2pd to come back", lambda: is_active(container))
    container.wait_for("systemd's log line", lambda: journal_says(container, "Watchdog timeout"))


def test_reload_rereads_the_config_without_a_restart(container: Container) -> None:
    before = main_pid(container)
    container.run(
        "sed", "-i", "s/^# upload_rate_limit = 0/upload_rate_limit = 1048576/", "/etc/p2pd.toml"
    )
    container.run("systemctl", "reload", "p2pd")
    container.wait_for(
        "the new rate limit",
        lambda: (
            json.loads(container.run("p2pctl", "--json", "status").stdout).get("upload_rate_limit")
            == 1048576
        ),
    )
    assert main_pid(container) == before
    registry = container.show("registryd", "MainPID")["MainPID"]
    container.run("systemctl", "reload", "registryd")
    # The check runs in a short child process (a fraction of a second), under
    # the unit's sandbox; systemd says "reloading" until READY=1.
    container.wait_for(
        "registryd's check of its config",
        lambda: journal_says(container, "reload: the config is valid and unchanged", "registryd"),
    )
    container.wait_for("registryd to be active again", lambda: is_active(container, "registryd"))
    assert container.show("registryd", "MainPID")["MainPID"] == registry  # the same process


def test_share_under_home_works_through_the_dropin(container: Container) -> None:
    container.run("sh", "-c", "mkdir -p /home/alice/Public && echo hi > /home/alice/Public/a.txt")
    container.run("chown", "-R", "alice:p2pd", "/home/alice/Public")
    container.run("chmod", "-R", "g+rX", "/home/alice/Public")
    container.run("chmod", "0711", "/home/alice")
    container.run(
        "sed", "-i", 's|^share_dir = .*|share_dir = "/home/alice/Public"|', "/etc/p2pd.toml"
    )
    container.run("p2pd", "install")
    container.run("systemctl", "restart", "p2pd")

    def shared() -> list[str]:
        listing = json.loads(container.run("p2pctl", "--json", "shared", user="alice").stdout)
        return [entry["path"] for entry in listing]

    container.wait_for("the share under /home", lambda: shared() == ["a.txt"])


def test_an_upgrade_restarts_the_running_services(container: Container) -> None:
    # As an install from before the credential left it: a config naming the
    # secret file, and the file readable by the group p2pd.
    container.run("sh", "-c", "echo 'secret_file = \"/etc/p2pd/secret\"' >> /etc/p2pd.toml")
    container.run("chgrp", "p2pd", "/etc/p2pd", "/etc/p2pd/secret")
    container.run("chmod", "0750", "/etc/p2pd")
    container.run("chmod", "0640", "/etc/p2pd/secret")
    before = main_pid(container)
    out = install(container)
    assert "made /etc/p2pd/secret root's alone (mode 0600 root:root, was 640 root:p2pd)" in out
    assert owner_and_mode(container, "/etc/p2pd/secret") == "root:root 600"
    assert owner_and_mode(container, "/etc/p2pd") == "root:root 700"
    container.wait_for("p2pd to run again", lambda: is_active(container))
    assert main_pid(container) != before
    # The old config still names the file, which p2pd may not read: the credential wins.
    container.wait_for("p2pd to register again", lambda: registered(container))
    container.wait_for(
        "p2pd to say the config's key is not used",
        lambda: journal_says(container, "'secret_file' in the config is not used under systemd"),
    )
    assert container.run("cat", "/etc/p2pd/secret", user="alice", check=False).returncode != 0
    doctor = container.run("p2pctl", "doctor", check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


def test_stop_is_clean_and_leaves_the_registry(container: Container) -> None:
    container.wait_for("p2pd to register", lambda: registered(container))
    peer_id = json.loads(container.run("p2pctl", "--json", "status").stdout)["id"]
    members = container.run("/opt/p2pd/bin/python", "-c", LIST_MEMBERS).stdout.split()
    assert peer_id in members
    container.run("systemctl", "stop", "p2pd")
    state = container.show("p2pd", "ActiveState", "Result")
    assert state == {"ActiveState": "inactive", "Result": "success"}
    members = container.run("/opt/p2pd/bin/python", "-c", LIST_MEMBERS).stdout.split()
    assert peer_id not in members
    container.wait_for("the log line", lambda: journal_says(container, "left the registry"))


def test_uninstall_keeps_config_and_data(container: Container) -> None:
    container.run("make", "-C", "/src", "uninstall", timeout=INSTALL_TIMEOUT)
    assert container.run("test", "-e", "/usr/local/bin/p2pd", check=False).returncode != 0
    assert container.run("test", "-e", "/opt/p2pd", check=False).returncode != 0
    for kept in (
        "/etc/p2pd.toml",
        "/etc/p2pd/secret",
        "/var/lib/p2pd",
        "/srv/p2pd/share/hello.txt",
    ):
        container.run("test", "-e", kept)
