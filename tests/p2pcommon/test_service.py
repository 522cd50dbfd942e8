"""sd_notify never stalls a daemon, even when nobody reads the notification socket."""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path

import pytest

from p2pcommon.service import Notifier


def test_a_notification_socket_nobody_reads_never_blocks_the_sender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="notify-", dir="/tmp"))
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(str(folder / "sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(folder / "sock"))
    monkeypatch.setattr(Notifier, "ESSENTIAL_WAIT", 0.1)
    notifier = Notifier()
    done = threading.Event()

    def chatter() -> None:
        # Far more than the queue holds (net.unix.max_dgram_qlen, ~10).
        for number in range(500):
            notifier.status(f"status {number}")
        notifier.ready("ready")
        done.set()

    threading.Thread(target=chatter, daemon=True).start()
    try:
        assert done.wait(30), "sd_notify blocked on a full queue"
        assert notifier.dropped > 0
        first = unread.recv(4096)
        assert first == b"STATUS=status 0"
    finally:
        notifier.close()
        unread.close()
        (folder / "sock").unlink()
        folder.rmdir()


def test_remote_text_cannot_add_an_assignment_systemd_acts_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="notify-", dir="/tmp"))
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(str(folder / "sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(folder / "sock"))
    notifier = Notifier()
    try:
        # A registry's unsigned 503 message, as it reaches the status line.
        notifier.status("not registered: 503 x\nWATCHDOG=trigger\nWATCHDOG_USEC=1 \udc80")
        notifier.ready("ready\nSTOPPING=1")
        status, ready = reader.recv(4096), reader.recv(4096)
        assert status.count(b"\n") == 0 and status.startswith(b"STATUS=not registered")
        assert ready.split(b"\n") == [b"READY=1", b"STATUS=ready STOPPING=1"]
    finally:
        notifier.close()
        reader.close()
        (folder / "sock").unlink()
        folder.rmdir()
