"""What a registry call can end with, and how its answers are read (p2pcommon.registry_client)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from p2pcommon.models import MAX_PAGE, MemberPage, validation_reason
from p2pcommon.service import one_line

Body = TypeVar("Body", bound=BaseModel)

#: Bytes of an error answer that are read for its message.
MAX_ERROR_BODY = 4096
#: The longest Retry-After taken into account, in seconds.
MAX_RETRY_AFTER = 300.0


class RegistryError(Exception):
    """Base of the errors below."""


class RegistryUnavailable(RegistryError):
    """No registry gave a usable answer; ``failures`` has one line per registry.

    ``retry_after`` is the shortest Retry-After (seconds) among the registries
    that asked for one (503 under load or during a store outage, 429), else None.
    """

    def __init__(self, failures: Sequence[str], retry_after: float | None = None) -> None:
        self.failures = list(failures)
        self.retry_after = retry_after
        super().__init__("no registry answered: " + "; ".join(self.failures))


class RegistryRefused(RegistryError):
    """A registry answered (authentically) that the request is wrong."""

    def __init__(self, status: int, error: str, message: str) -> None:
        self.status = status
        self.error = error
        super().__init__(f"registry refused ({status} {error}): {message}")


class UnknownMember(RegistryRefused):
    """The registry does not know this id (any more): register again."""


class WrongLease(RegistryRefused):
    """The registry holds another lease for this id (403): it registered again
    elsewhere, or another process has the same identity."""


class ProofError(RegistryError):
    """The register's member signature could not be made (the key, the signing child)."""


class InvalidAnswer(RegistryError):
    """A registry's answer, signed with our secret, is not what the API says."""


def parse_answer(model: type[Body], content: bytes, what: str) -> Body:
    try:
        return model.model_validate_json(content)
    except ValidationError as exc:
        raise InvalidAnswer(f"the registry's {what} is invalid: {validation_reason(exc)}") from None


def error_fields(content: bytes) -> tuple[str, str]:
    """The error body's two fields, as one printable line each: this text may be
    unsigned (401, 429, 5xx come from whatever answers at the URL) and ends up
    in logs, ``status`` and systemd's STATUS=."""
    try:
        data = json.loads(content[:MAX_ERROR_BODY])
        error, message = str(data.get("error", "")), str(data.get("message", ""))
    except (ValueError, AttributeError, RecursionError):
        error, message = "", content[:200].decode("utf-8", "replace")
    return one_line(error, 100), one_line(message, 300)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by registries)."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER)


def check_page(page: MemberPage, after: str | None, limit: int, certs: bool) -> MemberPage:
    """``page`` if it answers the query asked and keeps to it, else InvalidAnswer.

    The signature covers the path, not the query: the echo ties the answer to
    the question, and the ids must be sorted after ``after``, within the limit.
    """
    wanted = (after or None, min(MAX_PAGE, max(1, limit)), int(certs))
    if (page.after or None, page.limit, page.certs) != wanted:
        raise InvalidAnswer(
            f"the registry's page answers after={page.after!r}, limit={page.limit}, "
            f"certs={page.certs}, not {wanted}"
        )
    ids = [m.id for m in page.members]
    if len(ids) > page.limit or ids != sorted(set(ids)) or (after and ids and ids[0] <= after):
        raise InvalidAnswer("the registry's page is not ids sorted after the one asked")
    if page.next is not None and ids and page.next < ids[-1]:
        raise InvalidAnswer("the registry's page says to go on before its last member")
    return page
