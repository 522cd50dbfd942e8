"""What goes into the head of an answer, made cheaply: it is on every request.

The ``Date`` value is formatted once per second; the header fields are
checked here as h11 checks them, so that h11 can be told they are checked
(``h11.Response(_parsed=True)``): its own check was a measurable part of
each registry answer.  A test compares both checks on a corpus.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from http import HTTPStatus

import h11


class _HttpDate:
    """The ``Date`` header value, formatted once per second (RFC 9110 §6.6.1).

    Clients compare it with their own clock (``p2pctl doctor`` measures the
    skew that would make signatures stale), so every answer carries one.
    """

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._value = email.utils.formatdate(second, usegmt=True)
            self._second = second
        return self._value


http_date = _HttpDate()


#: What h11 allows in a header field (h11/_abnf.py): a token, and a value
#: without NUL, CR, LF, VT, FF, nor leading or trailing blanks.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_BAD_VALUE = re.compile(rb"[\x00\n\r\x0b\x0c]|\A[ \t]|[ \t]\Z")


def checked_fields(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The header fields as bytes; LocalProtocolError (as h11 raises) for an illegal one."""
    fields = []
    for name, value in headers:
        raw_name, raw_value = name.encode("ascii"), value.encode("ascii")
        if _TOKEN.fullmatch(raw_name) is None or _BAD_VALUE.search(raw_value) is not None:
            raise h11.LocalProtocolError(f"illegal header field {name!r}: {value!r}")
        fields.append((raw_name, raw_value))
    return fields


def phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""
