"""The register's proof, signed for real by p2pd's short child (p2pd.membership.keysign)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from p2pcommon.registry_client import ProofError
from p2pd.membership.link import KeySigner
from p2pd.tls.identity import load_or_create

BASE = b'"@method": POST\n"@path": /register'


async def test_the_child_signs_with_the_identity_key(tmp_path: Path) -> None:
    identity, _ = load_or_create(tmp_path)
    signature = await KeySigner(identity.key_path)(BASE)
    assert len(signature) == 64
    key = x509.load_pem_x509_certificate(identity.cert_pem.encode()).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    key.verify(encode_dss_signature(r, s), BASE, ec.ECDSA(hashes.SHA256()))
    # RFC 6979: the same base, the same signature.
    assert await KeySigner(identity.key_path)(BASE) == signature


async def test_a_damaged_or_missing_key_says_which_file_and_what_to_do(tmp_path: Path) -> None:
    identity, _ = load_or_create(tmp_path)
    identity.key_path.write_text("not a key\n")
    with pytest.raises(ProofError, match="identity.key is not a readable PEM private key: restore"):
        await KeySigner(identity.key_path)(BASE)
    identity.key_path.unlink()
    with pytest.raises(ProofError, match="cannot read .*identity.key: No such file"):
        await KeySigner(identity.key_path)(BASE)


async def test_a_child_that_hangs_is_stopped_at_its_deadline(tmp_path: Path) -> None:
    hanging = tmp_path / "identity.key"
    os.mkfifo(hanging)  # opening it for reading waits for a writer that never comes
    started = time.monotonic()
    with pytest.raises(ProofError, match=r"did not sign the register within 1 s"):
        await KeySigner(hanging, deadline=1.0)(BASE)
    assert time.monotonic() - started < 10
    await trio.lowlevel.checkpoint()
