"""Issue 20: nobody locks the members out of a daemon's server, and fds run out last.

- From four source addresses, 256 connections each that sent one byte held
  every "busy" slot of registryd for good: health probes failed and members
  lost their registration.  A partial request is not busy: the oldest makes
  room, and probes and heartbeats keep being answered.
- With the soft limit of open files below the connection bound, ``accept``
  failed with EMFILE (ten log lines a second) and newcomers waited; the
  daemons now serve fewer connections, evicting, before the kernel says no.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tests.hostile.attacker import (
    Attacker,
    Closed,
    joined,
    poll,
    read_response,
    registry_port,
    signed,
    tcp,
)
from tests.support import RunningRegistry, run_p2pd, run_registryd

SOURCES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


@contextlib.contextmanager
def held_open(
    port: int, count: int, *, source: str | None = None, send: bytes = b""
) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                sock = tcp(port, source=source, timeout=5)
            except OSError:
                continue  # refused or reset: that is the server's business
            socks.append(sock)
            if send:
                with contextlib.suppress(OSError):
                    sock.sendall(send)
        yield socks
    finally:
        for sock in socks:
            sock.close()


@contextlib.contextmanager
def held_from(port: int, sources: list[str], each: int) -> Iterator[None]:
    """``each`` idle connections from every address of ``sources``: more than the
    descriptors the daemon may open, fewer than its per-address bound."""
    with contextlib.ExitStack() as stack:
        for source in sources:
            stack.enter_context(held_open(port, each, source=source))
        yield


def healthz_within(port: int, seconds: float) -> bool:
    """One probe as a load balancer makes it: a whole answer within ``seconds``."""
    try:
        with tcp(port, timeout=seconds) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: registry\r\n\r\n")
            return read_response(sock).status == 200
    except (OSError, Closed):
        return False


def probes(port: int, count: int = 20) -> list[bool]:
    """Health probes as a load balancer sends them: one every 0.1 s."""
    results = []
    for _ in range(count):
        results.append(healthz_within(port, 5))
        time.sleep(0.1)
    return results


def test_partial_requests_from_four_addresses_lock_nobody_out(tmp_path: Path) -> None:
    with run_registryd(tmp_path) as registry:
        url, port = registry.url, registry_port(registry.url)
        member = Attacker.new(tmp_path / "member")
        with contextlib.ExitStack() as stack:
            for source in SOURCES:
                stack.enter_context(held_open(port, 256, source=source, send=b"P"))
            answered = probes(port)
            assert all(answered), f"{answered.count(False)} of {len(answered)} probes failed"
            # Members register and heartbeat through it.
            lease = joined(url, member, "member", 7070)
            for _ in range(5):
                beat = signed(url, "POST", "/heartbeat", {"id": member.id, "lease": lease})
                assert beat.status == 200, beat
        assert registry.process.poll() is None


def test_an_address_full_of_partial_requests_still_gets_a_whole_one_in(tmp_path: Path) -> None:
    """256 connections from one address, each with a request that never ends, then a
    whole request from that address: the oldest partial one makes room."""
    with run_registryd(tmp_path) as registry:
        url, port = registry.url, registry_port(registry.url)
        head = b"POST /heartbeat HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\n{"
        with held_open(port, 256, source="127.0.0.6", send=head):
            answer = signed(url, "GET", "/clients", source="127.0.0.6")
            assert answer.status == 200, answer


def registry_with_few_fds(tmp_path: Path) -> contextlib.AbstractContextManager[RunningRegistry]:
    return run_registryd(tmp_path, wrapper=["prlimit", "--nofile=400:400"])


def test_registryd_with_few_file_descriptors_evicts_before_the_kernel_refuses(
    tmp_path: Path,
) -> None:
    with registry_with_few_fds(tmp_path) as registry:
        port = registry_port(registry.url)
        with held_from(port, ["127.0.0.7", "127.0.0.8", "127.0.0.9"], 200):
            started = time.monotonic()
            assert healthz_within(port, 5), registry.log()[-2000:]
            assert time.monotonic() - started < 5
            answer = signed(registry.url, "GET", "/clients")
            assert answer.status == 200, answer
        log = registry.log()
        assert "only 400 file descriptors" in log
        assert "EMFILE" not in log and "cannot accept" not in log, log[-3000:]


def test_p2pd_with_few_file_descriptors_keeps_its_control_socket(tmp_path: Path) -> None:
    with (
        run_registryd(tmp_path) as registry,
        run_p2pd(
            tmp_path, "victim", [registry.url], wrapper=["prlimit", "--nofile=400:400"]
        ) as victim,
    ):
        poll(lambda: victim.ctl_json("status")["registered"], timeout=30, what="a register")
        with held_from(victim.port, ["127.0.0.10", "127.0.0.11", "127.0.0.12"], 200):
            started = time.monotonic()
            status = victim.ctl("--json", "status")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["registered"] is True
            assert time.monotonic() - started < 5
        log = victim.log()
        assert "only 400 file descriptors" in log
        assert "EMFILE" not in log and "cannot accept" not in log, log[-3000:]
