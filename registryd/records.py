"""Member records read back from a store, checked one by one before they are listed.

A record the registry itself wrote always passes; one written by another
version, by hand or half lost (a Redis field that is not JSON, a missing
certificate) must not make every full list fail: it is skipped, with one
warning (rate-limited, since every list reads it again), and the others are
listed.  The member stays out of the lists until its next register writes a
good record.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator

from p2pcommon.logs import RepeatedLines
from p2pcommon.models import (
    MAX_ADDRESS_LENGTH,
    MAX_ADDRESSES,
    MAX_CERT_LENGTH,
    MAX_NAME_LENGTH,
    PEER_ID_PATTERN,
)
from registryd.table import Entry

log = logging.getLogger("registryd")

_PEER_ID = re.compile(PEER_ID_PATTERN)
#: The stored certificate is canonical PEM (registryd.app): one block, nothing around it.
_PEM_START = "-----BEGIN CERTIFICATE-----\n"
#: Warnings about skipped records: a few a minute, then one line counting the rest.
_skipped = RepeatedLines(log, burst=5)


class BadRecord(ValueError):
    """A stored member record that cannot be listed; the message says which field."""


def entry_from_fields(
    member_id: object,
    last_seen: object,
    name: object,
    cert: object,
    addresses: object,
    expires_at: object = math.inf,
) -> Entry:
    """An Entry from a store's raw fields (``addresses`` as stored: JSON text); BadRecord.

    ``cert`` None: a record read without its certificate (a page with ``certs=0``).
    """
    if not isinstance(addresses, str):
        raise BadRecord("field 'addresses' is missing")
    try:
        decoded = json.loads(addresses)
    except (ValueError, RecursionError):
        raise BadRecord("field 'addresses' is not JSON") from None
    if not isinstance(decoded, list):
        raise BadRecord("field 'addresses' is not a JSON list")
    try:
        seen = float(last_seen)  # type: ignore[arg-type]
        ends = float(expires_at)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRecord("its time of last renewal or of expiry is not a number") from None
    entry = Entry(
        id=str(member_id),
        name=name,  # type: ignore[arg-type]
        cert="" if cert is None else cert,  # type: ignore[arg-type]
        addresses=tuple(decoded),
        last_seen=seen,
        expires_at=ends,
    )
    problem = entry_problem(entry, with_cert=cert is not None)
    if problem is not None:
        raise BadRecord(problem)
    return entry


def entry_problem(entry: Entry, *, with_cert: bool = True) -> str | None:
    """Why ``entry`` cannot be listed (a member would refuse the whole list), or None.

    ``with_cert`` False: the record was read without its certificate.
    """
    if not isinstance(entry.id, str) or _PEER_ID.fullmatch(entry.id) is None:
        return "its id is not a peer id"
    name = entry.name
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        return f"field 'name' is not a string of 1 to {MAX_NAME_LENGTH} characters"
    cert = entry.cert
    if with_cert and (
        not isinstance(cert, str) or not cert.startswith(_PEM_START) or len(cert) > MAX_CERT_LENGTH
    ):
        return "field 'cert' is not a PEM certificate"
    addresses = entry.addresses
    if len(addresses) > MAX_ADDRESSES or not all(
        isinstance(a, str) and 0 < len(a) <= MAX_ADDRESS_LENGTH for a in addresses
    ):
        return f"field 'addresses' is not a list of at most {MAX_ADDRESSES} host:port strings"
    if not math.isfinite(entry.last_seen) or math.isnan(entry.expires_at):
        return "its time of last renewal or of expiry is not a number"
    return None


def checked(entry: Entry | None, store: str) -> Entry | None:
    """``entry``, or None with a warning if it cannot be answered."""
    if entry is None:
        return None
    problem = entry_problem(entry)
    if problem is None:
        return entry
    skipped(str(entry.id), problem, store)
    return None


def skip_bad(entries: Iterable[Entry], store: str) -> Iterator[Entry]:
    """``entries`` without those that cannot be listed, each skipped with a warning."""
    for entry in entries:
        problem = entry_problem(entry)
        if problem is None:
            yield entry
        else:
            skipped(str(entry.id), problem, store)


def skipped(member_id: str, problem: str, store: str) -> None:
    """One warning for a record left out of a list."""
    _skipped.log(
        logging.WARNING,
        "skipped member records",
        "skipped the member record of %r in the store %s: %s; the other members are listed, "
        "and it is left out until it registers again",
        member_id[:60],
        store,
        problem,
    )
