"""`systemctl reload p2pd` (SIGHUP): live keys apply at once, the rest wait for a restart."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.p2pd.test_e2e import FAST, peers_of
from tests.support import reload, run_p2pd, run_registryd, wait_until


async def test_reload_applies_live_keys_and_names_the_rest(tmp_path: Path) -> None:
    with (
        run_registryd(tmp_path) as registry,
        run_p2pd(tmp_path, "alice", [registry.url], extra_config=FAST) as alice,
        run_p2pd(tmp_path, "bob", [registry.url], extra_config=FAST) as bob,
    ):
        (alice.share_dir / "new.txt").write_text("added while running\n")
        text = alice.config_path.read_text()
        alice.config_path.write_text(
            text.replace('name = "alice"', 'name = "alice-renamed"').replace(
                f'listen = "127.0.0.1:{alice.port}"', 'listen = "127.0.0.1:1"'
            )
            + "upload_rate_limit = 1048576\n"
        )
        await trio.to_thread.run_sync(reload, alice)
        status = await alice.actl_json("status")
        assert status["name"] == "alice-renamed"
        assert status["upload_rate_limit"] == 1048576
        assert status["listen"] == f"127.0.0.1:{alice.port}"  # still serving where it was
        assert "listen changed; that takes a restart" in alice.log()
        # The reload rescans the share, and the other members see the new name.
        assert [e["path"] for e in await alice.actl_json("shared")] == ["new.txt"]

        async def bob_sees_new_name() -> bool:
            return "alice-renamed" in [p["name"] for p in await peers_of(bob)]

        await wait_until(bob_sees_new_name, what="bob to see alice's new name")


async def test_a_bad_config_on_reload_keeps_the_daemon_running(tmp_path: Path) -> None:
    with (
        run_registryd(tmp_path) as registry,
        run_p2pd(tmp_path, "alice", [registry.url]) as alice,
    ):
        alice.config_path.write_text(alice.config_path.read_text() + "upload_slotz = 3\n")
        await trio.to_thread.run_sync(reload, alice)
        assert alice.process.poll() is None
        assert "reload refused, keeping the running configuration" in alice.log()
        assert "unknown key 'upload_slotz'" in alice.log()
        assert (await alice.actl_json("status"))["name"] == "alice"
