"""Where a received GiB's CPU goes in p2pd/tls/bodypump.py, one process, no daemons.

.venv/bin/python -m bench.pump [--size-mib N]

A thread sends N MiB over TLS 1.3 on a socketpair (a throwaway P-256
certificate); ``receive_direct`` receives it into a file in TMPDIR with the
same threads as a download. The calls that do the work are wrapped to add
up their threads' CPU time: what is left of the threads' total is Python.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

import p2pd.tls.bodypump as pump
from bench.transfer import tls_files

SPENT: dict[str, float] = collections.defaultdict(float)


def timed(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        started = time.thread_time()
        try:
            return call(*args)
        finally:
            SPENT[name] += time.thread_time() - started

    return wrapper


def server_context(folder: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files(folder))
    return context


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    size = parser.parse_args().size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="p2pd-pump-") as tmp:
        folder = Path(tmp)
        theirs, ours = socket.socketpair()
        block = os.urandom(1024 * 1024)
        sent = hashlib.sha256()
        for _ in range(size // len(block)):
            sent.update(block)

        def serve() -> None:
            with server_context(folder).wrap_socket(theirs, server_side=True) as tls:
                for _ in range(size // len(block)):
                    tls.sendall(block)
                tls.recv(1)

        sender = threading.Thread(target=serve, daemon=True)
        sender.start()
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ssl_object = client.wrap_bio(incoming, outgoing)
        while True:
            try:
                ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                ours.sendall(outgoing.read())
                incoming.write(ours.recv(65536))
        ours.sendall(outgoing.read())
        ours.setblocking(False)
        body = pump.DirectBody(
            pump.RawTLS(ours.fileno(), ssl_object, incoming, outgoing), [], size, 20
        )
        for name in ("readv", "pwrite"):
            setattr(os, name, timed(name, getattr(os, name)))  # as bodypump calls them
        ssl.SSLObject.read = timed("SSLObject.read", ssl.SSLObject.read)  # type: ignore[method-assign]
        digest = hashlib.sha256()
        digest_update = timed("sha256", digest.update)
        hashing = type("Hashing", (), {"update": staticmethod(digest_update)})()
        out = os.open(folder / "out", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        started = time.perf_counter()
        before = time.process_time()
        trio.run(lambda: pump.receive_direct(body, out, 0, hashing, on_chunk=lambda n: None))
        wall, cpu = time.perf_counter() - started, time.process_time() - before
        os.close(out)
        ours.close()
        assert digest.hexdigest() == sent.hexdigest(), "the bytes differ"
    gib = size / 2**30
    print(f"{size >> 20} MiB received in {wall:.2f} s; this process: {cpu / gib:.2f} CPU-s per GiB")
    print("the receiving threads, by call (the rest of their time: MemoryBIO.write and Python):")
    for name, seconds in sorted(SPENT.items(), key=lambda item: -item[1]):
        print(f"  {name:16} {seconds / gib:5.2f} s per GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
