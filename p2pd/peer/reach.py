"""Why a member could not be reached, in words a user can act on (no I/O).

``PeerConnection.open`` tries each address the registry lists for a member;
this turns what each attempt raised (a refused connection, a timeout, a TLS
handshake that failed, another certificate) into one sentence with the
likely cause, instead of the socket library's wording.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Sequence

import trio

from p2pd.tls.contexts import PeerMismatch

#: errno → (what happened, what to check).
_SOCKET_ERRORS = {
    errno.ECONNREFUSED: ("connection refused", "is its p2pd running? a firewall?"),
    errno.EHOSTUNREACH: ("no route to host", "is the host up, and the address right?"),
    errno.ENETUNREACH: ("network unreachable", "is the address right for this network?"),
    errno.ETIMEDOUT: ("timed out", "is the host up? a firewall?"),
    errno.ECONNRESET: ("connection reset", "a firewall? is it a p2pd?"),
    errno.ECONNABORTED: ("connection aborted", "a firewall? is it a p2pd?"),
    errno.EADDRNOTAVAIL: ("address not available", "is the address right?"),
}


def _root(exc: BaseException) -> BaseException:
    """The innermost cause: trio wraps a failed connect in a group, TLS errors in
    BrokenResourceError."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            break
    return exc


def failure_reason(exc: BaseException, connect_timeout: float) -> tuple[str, str]:
    """(what happened at one address, what to check) for what connecting raised."""
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {connect_timeout:g} s", "is the host up? a firewall?"
    if isinstance(exc, PeerMismatch):
        return (
            "another member's certificate answered there",
            "is the address out of date (another p2pd answers there)?",
        )
    root = _root(exc)
    if isinstance(root, ssl.SSLCertVerificationError):
        what = "it presented a certificate that is not this member's"
        if root.verify_message:
            # OpenSSL's words too: "self-signed", "expired" and the like tell cases apart.
            what += f"; certificate verify failed: {root.verify_message}"
        return (
            what,
            "is the address out of date (another program or p2pd answers there)?",
        )
    if isinstance(root, ssl.SSLError):
        why = root.reason or root.strerror or type(root).__name__
        return (
            f"TLS handshake failed: {why}",
            "is it a p2pd of this network (same secret, a recent version)?",
        )
    if isinstance(root, socket.gaierror):
        return f"cannot resolve the host: {root.strerror}", "is the address right?"
    if isinstance(root, OSError) and root.errno in _SOCKET_ERRORS:
        return _SOCKET_ERRORS[root.errno]
    if isinstance(exc, trio.BrokenResourceError | EOFError) or isinstance(root, EOFError):
        return "it closed the connection", "is it a p2pd of this network?"
    if isinstance(root, ValueError):
        return f"not a usable address: {root}", "does the member advertise a wrong address?"
    text = (root.strerror if isinstance(root, OSError) else None) or str(root)
    return text or type(root).__name__, "is its p2pd running? a firewall?"


def unreachable_message(
    name: str, failures: Sequence[tuple[str, BaseException]], connect_timeout: float
) -> str:
    """One sentence for a member none of whose addresses worked."""
    if not failures:
        return f"{name} is registered without any address: it cannot be reached"
    reasons = [(address, *failure_reason(exc, connect_timeout)) for address, exc in failures]
    # Each hint is a few questions: ask each once ("a firewall?" fits several causes).
    questions = (q.strip() + "?" for _, _, hint in reasons for q in hint.split("?") if q.strip())
    hints = " ".join(dict.fromkeys(questions))
    if len(reasons) == 1:
        address, what, _ = reasons[0]
        return f"{name} is registered but cannot be reached at {address} ({what}): {hints}"
    tried = "; ".join(f"{address} ({what})" for address, what, _ in reasons)
    return f"{name} is registered but cannot be reached at any of its addresses: {tried}: {hints}"
