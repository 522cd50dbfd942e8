"""Small files are served as cheaply as they can be (issue 14): read with the open,
sent with the head in one write, and counted and released as any other upload."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import trio

from p2pd.peer.server import READ_AHEAD
from tests.hostile.attacker import Attacker, build_request, client_context
from tests.p2pd.peer.test_http_standards import served

SMALL = os.urandom(4096)


def first_read(port: int, who: Attacker, target: str, headers: dict[str, str]) -> bytes:
    """What one TLS read returns after the request: at most one record's worth."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client_context(who).wrap_socket(raw) as sock:
        sock.sendall(build_request("GET", target, headers))
        return sock.recv(65536)


async def test_a_small_file_comes_with_its_head_in_one_record(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "small.bin").write_bytes(SMALL)
    async with served(tmp_path) as s:
        got = await trio.to_thread.run_sync(first_read, s.port, s.member, "/files/small.bin", {})
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == SMALL  # the whole body was in the head's TLS record
        part = await s.ask("GET", "/files/small.bin", {"Range": "bytes=100-199"})
        assert (part.status, part.body) == (206, SMALL[100:200])
        assert part.headers["content-range"] == f"bytes 100-199/{len(SMALL)}"
        assert s.server.stats.served_files == 2
        assert s.server.stats.served_bytes == len(SMALL) + 100
    # (served() checks that every upload slot and file was handed back)


async def test_a_file_larger_than_the_read_ahead_is_still_served_whole(tmp_path: Path) -> None:
    data = os.urandom(READ_AHEAD + 1)
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "edge.bin").write_bytes(data)
    async with served(tmp_path) as s:
        answer = await s.ask("GET", "/files/edge.bin")
        assert (answer.status, answer.body) == (200, data)
        tail = await s.ask("GET", "/files/edge.bin", {"Range": f"bytes={len(data) - 10}-"})
        assert (tail.status, tail.body) == (206, data[-10:])


async def test_a_small_file_that_shrank_since_indexing_is_not_served(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    small = tmp_path / "share" / "small.bin"
    small.write_bytes(SMALL)
    async with served(tmp_path) as s:
        stat = small.stat()
        with small.open("r+b") as f:
            f.truncate(10)
        os.utime(small, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        answer = await s.ask("GET", "/files/small.bin")
        assert answer.status == 503 and answer.headers["retry-after"] == "1"
        assert SMALL[:10] not in answer.body
