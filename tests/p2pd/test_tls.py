"""The server's trust store: one member's unusable certificate never locks out the others."""

from __future__ import annotations

import ssl
from pathlib import Path

from p2pd.identity import load_or_create
from p2pd.tls import ServerContexts
from tests.support import Peer


def test_an_unusable_member_certificate_is_skipped_not_fatal(tmp_path: Path) -> None:
    identity, _ = load_or_create(tmp_path)
    good = Peer.new("good")
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    contexts = ServerContexts(identity)
    context = contexts.current({good.id: good.cert, "x" * 52: good.cert + broken})
    assert isinstance(context, ssl.SSLContext)
    # The good member's certificate is a trust anchor; the broken entry added none.
    assert context.cert_store_stats()["x509"] == 2  # ours and good's
