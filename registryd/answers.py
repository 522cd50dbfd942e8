"""What the registry's actions take and give: an authenticated call, an answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from p2pcommon.http.events import Request, Response
from p2pcommon.signing.member_proof import MemberSignature
from p2pcommon.signing.signer import Verified


@dataclass
class Answer:
    status: int
    payload: object
    #: The body already encoded (a full member list from the snapshot), else None.
    raw: bytes | None = None


def error(status: int, error: str, message: str) -> Answer:
    return Answer(status, {"error": error, "message": message})


@dataclass(frozen=True)
class Call:
    """An authenticated request, as an action gets it."""

    request: Request
    now: float
    verified: Verified
    #: The ``member`` signature of a register (docs/protocol.md §2.4), else None.
    member: MemberSignature | None = None


class Unsigned(Exception):
    """Raised by an action to answer with ``response`` as it is: a refusal that is
    not signed, like every 401 and 429 (docs/protocol.md §2.2)."""

    def __init__(self, response: Response) -> None:
        self.response = response


Body = TypeVar("Body", bound=BaseModel)
Action = Callable[[Call], Awaitable[Answer]]


def parse(model: type[Body], body: bytes) -> Body | Answer:
    """The request body as ``model``, or the 400 answer naming the first bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            return error(400, "bad request", "the body must be a JSON object")
        field = ".".join(str(part) for part in first["loc"]) or "body"
        return error(400, "bad request", f"field '{field}': {first['msg']}")
