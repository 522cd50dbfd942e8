"""The downloader's errors say what happened, in the user's terms."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pcommon.models import Member
from p2pd.identity import load_or_create
from p2pd.peerclient import PeerPool, PeerUnreachable
from tests.support import Peer, free_port


async def test_an_unreachable_member_is_explained_without_internals(tmp_path: Path) -> None:
    identity, _ = load_or_create(tmp_path)
    bob = Peer.new("bob")
    member = Member(
        id=bob.id,
        name="bob",
        addresses=[f"127.0.0.1:{free_port()}"],
        cert=bob.cert,
        last_seen=0.0,
    )
    pool = PeerPool(identity)
    with pytest.raises(PeerUnreachable) as caught:
        await pool.listing(member)
    await pool.aclose()
    message = str(caught.value)
    assert message.startswith("cannot reach bob: 127.0.0.1:")
    assert "Connection refused" in message
    assert "sub-exception" not in message
