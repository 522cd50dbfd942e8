"""The register's proof, signed by a short child process (docs/protocol.md §2.4).

Each register carries a signature by the identity key over that request
(its body and nonce), so it is made anew at every register: at start, after
a registry forgot us, after a reload.  Signing takes cryptography (≈ 8 MiB
resident once imported, and a running p2pd never imports it), so
``python -m p2pd.membership.keysign KEY_FILE`` does it: the signature base on its
stdin, ``{"signature": <base64>}`` (or ``{"error": …}``) on its stdout.
Its imports are kept to the few it needs, since it runs at every register
(``p2pd.membership.link.KeySigner`` is the daemon's side).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

#: Bytes of a signature base (a few lines).
MAX_BASE = 16 * 1024


def _sign(key_path: Path, base: bytes) -> dict[str, str]:
    # Here, in the child only: the daemon must never load these.
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from p2pcommon.signing.member_proof import sign_base

    try:
        key = load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        return {"error": f"cannot read {key_path}: {exc.strerror or exc}"}
    except (ValueError, TypeError):
        return {
            "error": f"{key_path} is not a readable PEM private key: restore it from a "
            "backup, or remove identity.key and identity.crt to become a new member"
        }
    try:
        signature = sign_base(key, base)
    except ValueError as exc:
        return {"error": f"{key_path}: {exc}"}
    return {"signature": base64.b64encode(signature).decode("ascii")}


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m p2pd.membership.keysign KEY_FILE < signature-base", file=sys.stderr)
        return 2
    base = sys.stdin.buffer.read(MAX_BASE + 1)
    if len(base) > MAX_BASE:
        answer = {"error": f"the signature base is longer than {MAX_BASE} bytes"}
    else:
        answer = _sign(Path(sys.argv[1]), base)
    json.dump(answer, sys.stdout)
    return 0 if "signature" in answer else 1


if __name__ == "__main__":
    sys.exit(main())
