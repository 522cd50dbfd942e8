"""`p2pctl search` over real daemons: every member asked, results grouped by content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile.attacker import ctl, poll
from tests.support import RunningPeer, free_port, run_p2pd, run_registryd

FAST = "heartbeat_interval = 0.5\n"
TIME = b"the great gig in the sky\n" * 100
OTHER_TIME = b"another recording\n" * 10
TIME_HEX = hashlib.sha256(TIME).hexdigest()
OTHER_HEX = hashlib.sha256(OTHER_TIME).hexdigest()


@dataclass
class Trio:
    alice: RunningPeer
    bob: RunningPeer
    carol: RunningPeer


def peer_names(peer: RunningPeer) -> set[str]:
    result = ctl(peer.socket_path, "--json", "peers", timeout=30)
    return {p["name"] for p in json.loads(result.stdout)} if result.returncode == 0 else set()


def shared_count(peer: RunningPeer) -> int:
    result = ctl(peer.socket_path, "--json", "shared", timeout=30)
    return len(json.loads(result.stdout)) if result.returncode == 0 else -1


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    base = tmp_path_factory.mktemp("search")
    files = {
        "bob": {"Music/Pink Floyd/Time.flac": TIME, "notes.txt": b"notes"},
        "carol": {"songs/Time.flac": TIME, "live/Time (live).flac": OTHER_TIME},
    }
    for name, shared in files.items():
        for path, data in shared.items():
            (base / name / "share" / path).parent.mkdir(parents=True, exist_ok=True)
            (base / name / "share" / path).write_bytes(data)
    with run_registryd(base, {"REGISTRYD_PEER_TTL": "600"}) as registry:
        urls = [registry.url]
        with (
            run_p2pd(base, "alice", urls, extra_config=FAST) as alice,
            run_p2pd(base, "bob", urls, extra_config=FAST) as bob,
            run_p2pd(base, "carol", urls, extra_config=FAST) as carol,
        ):
            everyone = {"alice", "bob", "carol"}
            for peer in (alice, bob, carol):
                others = everyone - {peer.name}
                poll(
                    lambda: peer_names(peer) == others,  # noqa: B023 (called at once)
                    timeout=60,
                    what=f"{peer.name} to see the others",
                    every=0.3,
                )
            for peer in (bob, carol):
                poll(
                    lambda: shared_count(peer) == 2,  # noqa: B023 (called at once)
                    timeout=60,
                    what=f"{peer.name} to index its share",
                )
            yield Trio(alice, bob, carol)


def test_search_json_groups_by_content_most_sources_first(three: Trio) -> None:
    result = ctl(three.alice.socket_path, "--json", "search", "TIME flac")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["asked"], document["answered"], document["silent"]) == (2, 2, 0)
    assert document["refused"] == 0 and document["partial"] is False
    first, second = document["results"]
    assert first["sha256"] == TIME_HEX and first["size"] == len(TIME)
    assert first["names"] == ["Time.flac"]
    assert sorted((m["name"], m["path"]) for m in first["members"]) == [
        ("bob", "Music/Pink Floyd/Time.flac"),
        ("carol", "songs/Time.flac"),
    ]
    assert {m["id"] for m in first["members"]} == {
        json.loads(ctl(p.socket_path, "--json", "status").stdout)["id"]
        for p in (three.bob, three.carol)
    }
    assert second["sha256"] == OTHER_HEX and [m["name"] for m in second["members"]] == ["carol"]
    assert second["names"] == ["Time (live).flac"]


def test_exclusions_globs_and_hash_prefixes_reach_every_member(three: Trio) -> None:
    def found(*args: str) -> list[str]:
        result = ctl(three.alice.socket_path, "--json", "search", *args)
        assert result.returncode == 0, result.stderr
        return [r["sha256"] for r in json.loads(result.stdout)["results"]]

    assert found("time -live") == [TIME_HEX]
    assert found("*(live)*") == [OTHER_HEX]
    assert found("--sha256", OTHER_HEX[:8].upper()) == [OTHER_HEX]
    assert found("nothing-like-this") == []


def test_human_output_is_a_table_then_the_counts(three: Trio) -> None:
    result = ctl(three.alice.socket_path, "search", "time")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SOURCES", "SIZE", "SHA256", "NAME", "MEMBERS"]
    assert lines[1].split()[0] == "2" and TIME_HEX[:12] in lines[1] and "bob, carol" in lines[1]
    assert lines[2].split()[0] == "1" and "Time (live).flac" in lines[2]
    assert lines[-1] == "asked 2 of 2 members: 2 answered, 0 silent, 0 refused"


@pytest.mark.parametrize(
    "args",
    [
        ["search"],
        ["search", "--sha256", "abc"],
        ["search", "x", "--timeout", "0"],
        ["search", "x", "--timeout", "61"],
        ["fetch", "--sha256", "ab" * 16],
        ["fetch", "bob", "a.txt", "--sha256", "ab" * 32],
        ["fetch", "bob", "a.txt", "--name", "b.txt"],
        ["fetch", "--sha256", "ab" * 32, "--name", "a/b"],
    ],
)
def test_usage_errors_exit_2_and_say_what_to_give(three: Trio, args: list[str]) -> None:
    result = ctl(three.alice.socket_path, *args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "p2pctl" in result.stderr and result.stdout == ""


def test_a_query_the_daemon_refuses_exits_1_naming_the_field(three: Trio) -> None:
    result = ctl(three.alice.socket_path, "search", " ".join("abcdefghi"))
    assert result.returncode == 1
    assert "search: q: 9 terms; give 8 at most" in result.stderr


def test_fetch_by_sha256_takes_the_most_common_name_and_says_its_sources(three: Trio) -> None:
    alice = three.alice
    result = ctl(alice.socket_path, "--json", "fetch", "--sha256", TIME_HEX.upper())
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "ok" and outcome["sha256"] == TIME_HEX
    landed = alice.download_dir / "Time.flac"
    assert outcome["path"] == str(landed) and landed.read_bytes() == TIME
    holders = {
        json.loads(ctl(p.socket_path, "--json", "status").stdout)["id"]: p.name
        for p in (three.bob, three.carol)
    }
    [source] = outcome["sources"]
    assert source["id"] == outcome["peer_id"] and holders[source["id"]] == source["name"]
    assert (source["bytes"], source["bad_pieces"]) == (len(TIME), 0)

    named = ctl(alice.socket_path, "--json", "fetch", "--sha256", OTHER_HEX, "--name", "x.flac")
    assert named.returncode == 0, named.stderr
    assert (alice.download_dir / "x.flac").read_bytes() == OTHER_TIME
    assert json.loads(named.stdout)["sources"][0]["name"] == "carol"
    again = ctl(alice.socket_path, "fetch", "--sha256", OTHER_HEX, "--name", "x.flac")
    assert again.returncode == 0 and "already there" in again.stdout


def test_fetch_of_content_nobody_has_fails_and_is_recorded(three: Trio) -> None:
    missing = "0" * 64
    result = ctl(three.alice.socket_path, "--json", "fetch", "--sha256", missing)
    assert result.returncode == 1
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "failed"
    assert "no member answered that it has sha256 " + missing in outcome["error"]
    assert "asked 2 of 2 members (2 answered, 0 silent, 0 refused)" in outcome["error"]
    history = json.loads(ctl(three.alice.socket_path, "--json", "history").stdout)
    assert any(o["id"] == outcome["id"] and o["status"] == "failed" for o in history)


def test_a_daemon_not_registered_says_so_instead_of_asking_members_who_would_refuse(
    tmp_path: Path,
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    with run_p2pd(tmp_path, "lone", [nowhere]) as lone:
        for command in (["search", "time"], ["fetch", "--sha256", TIME_HEX]):
            result = ctl(lone.socket_path, *command)
            assert result.returncode == 1, result
            assert "not registered with a registry yet" in result.stderr, result.stderr
            assert "p2pctl status" in result.stderr
