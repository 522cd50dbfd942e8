"""GET /search on a real peer server over mutual TLS (docs/protocol.md §4.4)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from p2pd.peer import search_route
from tests.p2pd.peer.test_http_standards import served


def fill(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


async def test_terms_exclusions_globs_hashes_and_sizes_are_answered(tmp_path: Path) -> None:
    fill(
        tmp_path / "share",
        {
            "Music/Pink Floyd/Time.flac": b"t" * 300,
            "Music/Pink Floyd/Money.mp3": b"m" * 100,
            "Music/pink noise.mp3": b"n" * 50,
            "docs/readme.txt": b"hello",
        },
    )
    async with served(tmp_path) as s:

        async def paths(target: str) -> list[str]:
            answer = await s.ask("GET", target)
            assert answer.status == 200, answer.body
            assert answer.headers["content-type"] == "application/json"
            body = json.loads(answer.body)
            assert body["more"] is False
            return [f["path"] for f in body["files"]]

        assert await paths("/search?q=PINK+floyd") == [
            "Music/Pink Floyd/Money.mp3",
            "Music/Pink Floyd/Time.flac",
        ]
        assert await paths("/search?q=pink+-floyd") == ["Music/pink noise.mp3"]
        assert await paths("/search?q=*.MP3") == [
            "Music/Pink Floyd/Money.mp3",
            "Music/pink noise.mp3",
        ]
        sha = hashlib.sha256(b"hello").hexdigest()
        assert await paths(f"/search?sha256={sha[:8]}") == ["docs/readme.txt"]
        assert await paths("/search?q=pink&min_size=60&max_size=200") == [
            "Music/Pink Floyd/Money.mp3"
        ]
        answer = json.loads((await s.ask("GET", f"/search?sha256={sha}")).body)
        assert answer["files"][0] == {
            "path": "docs/readme.txt",
            "size": 5,
            "mtime": answer["files"][0]["mtime"],
            "sha256": sha,
            # As the listing has them: a file of one 16 KiB block is its own root.
            "root": sha,
            "piece_size": 16 * 1024,
        }


async def test_a_large_index_is_searched_off_the_loop_with_the_same_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(tmp_path / "share", {f"d/f{i}.txt": b"x" for i in range(5)} | {"d/g.bin": b"y"})
    async with served(tmp_path) as s:
        in_loop = json.loads((await s.ask("GET", "/search?q=d/f")).body)
        monkeypatch.setattr(search_route, "IN_LOOP_MAX", 0)
        in_thread = json.loads((await s.ask("GET", "/search?q=d/f")).body)
        assert in_thread == in_loop and len(in_loop["files"]) == 5
        glob = json.loads((await s.ask("GET", "/search?q=*.bin")).body)
        assert [f["path"] for f in glob["files"]] == ["d/g.bin", "data.bin"]  # served() adds one


async def test_at_most_100_matches_and_more_says_there_were_others(tmp_path: Path) -> None:
    fill(tmp_path / "share", {f"many/file{i:03}.txt": str(i).encode() for i in range(150)})
    async with served(tmp_path) as s:
        body = json.loads((await s.ask("GET", "/search?q=file")).body)
        assert len(body["files"]) == 100 and body["more"] is True
        assert body["files"][0]["path"] == "many/file000.txt"
        small = json.loads((await s.ask("GET", "/search?q=file&limit=3")).body)
        assert [f["path"] for f in small["files"]] == [f"many/file00{i}.txt" for i in range(3)]
        assert small["more"] is True
        exact = json.loads((await s.ask("GET", "/search?q=file149")).body)
        assert len(exact["files"]) == 1 and exact["more"] is False


async def test_bad_queries_get_400_naming_the_parameter(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        for target, field in [
            ("/search", "q"),
            ("/search?sha256=abc", "sha256"),
            ("/search?q=a&q=b", "q"),
            ("/search?q=" + "x" * 300, "q"),
            ("/search?q=" + "+".join("abcdefghi"), "q"),
            ("/search?q=a&colour=red", "target"),
            ("/search?min_size=5&max_size=1", "max_size"),
        ]:
            answer = await s.ask("GET", target)
            assert answer.status == 400, target
            body = json.loads(answer.body)
            assert body["error"] == "bad query"
            assert body["message"].startswith(field + ":"), (target, body)


async def test_a_member_searching_too_often_gets_429_with_retry_after(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        now = [0.0]
        s.server.search.clock = lambda: now[0]  # time stands still: no refill
        statuses = [(await s.ask("GET", "/search?q=data")).status for _ in range(11)]
        assert statuses == [200] * 10 + [429]
        refused = await s.ask("GET", "/search?q=data")
        assert refused.status == 429 and refused.headers["retry-after"] == "1"
        assert json.loads(refused.body)["error"] == "too many searches"
        now[0] += 0.2  # one search's worth of refill
        assert (await s.ask("GET", "/search?q=data")).status == 200
        assert (await s.ask("GET", "/search?q=data")).status == 429
        # For the metrics (p2pd_search_requests, p2pd_refused{reason}).
        assert s.server.search.searches == 11
        assert s.server.stats.refused["too many searches"] == 3
