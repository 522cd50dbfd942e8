"""JSON bodies of the registry API (docs/protocol.md §3), shared by the server and its clients."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from p2pcommon.paths import MAX_PATH_BYTES, SHA256_PATTERN, check_relpath

PEER_ID_PATTERN = r"^[a-z2-7]{52}$"
#: What one registration may carry (docs/protocol.md §3.2): every member's record
#: goes to every other member, so these bound the member list (a P-256
#: certificate's PEM is about 600 characters).
MAX_CERT_LENGTH = 4 * 1024
MAX_ADDRESSES = 8
MAX_ADDRESS_LENGTH = 128
MAX_NAME_LENGTH = 64
#: A lease token (docs/protocol.md §3.3): the registry hands out 22 base64url characters.
LEASE_PATTERN = r"^[A-Za-z0-9_-]{16,128}$"

PeerId = Annotated[str, StringConstraints(pattern=PEER_ID_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; ValueError naming what is wrong."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{value!r} is not host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address as [address]:port")
    elif not _is_hostname(host):
        raise ValueError(f"{host!r} is not a host name or address")
    return host, port


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63
        and label.replace("-", "").replace("_", "").isalnum()
        and label.isascii()
        and not label.startswith("-")
        for label in labels
    )


def _check_address(value: str) -> str:
    split_host_port(value)
    return value


def _check_name(value: str) -> str:
    if not value.isprintable():
        raise ValueError("name must not contain control characters")
    return value


HostPort = Annotated[
    str, StringConstraints(max_length=MAX_ADDRESS_LENGTH), AfterValidator(_check_address)
]
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, strip_whitespace=True),
    AfterValidator(_check_name),
]


class _Body(BaseModel):
    # Unknown fields are ignored so that newer peers can add fields without
    # being refused by older registries.
    model_config = ConfigDict(extra="ignore", frozen=True)


class RegisterRequest(_Body):
    id: PeerId
    name: Name
    cert: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CERT_LENGTH)]
    port: Annotated[int, Field(ge=1, le=65535, strict=True)]
    addresses: Annotated[list[HostPort], Field(max_length=MAX_ADDRESSES)] | None = None


LeaseToken = Annotated[str, StringConstraints(pattern=LEASE_PATTERN)]


class MemberRequest(_Body):
    """``POST /heartbeat`` and ``POST /leave``: the id and the lease its last register gave."""

    id: PeerId
    lease: LeaseToken


class Lease(_Body):
    """A register's or a heartbeat's answer: the pace (docs/protocol.md §3.3)."""

    ttl: float
    heartbeat_interval: float
    #: How many members the registry counts (approximately); None from older registries.
    members: Annotated[int, Field(ge=0, strict=True)] | None = None
    #: In a register's answer only: what heartbeats and the leave must show.  None
    #: from registries older than leases.
    lease: LeaseToken | None = None


class Member(_Body):
    id: str
    name: str
    addresses: list[str]
    #: Empty in a page asked without certificates (``certs=0``).
    cert: str = ""
    last_seen: float


class Clients(_Body):
    clients: list[Member]


#: Members in one page at most (docs/protocol.md §3.4): a larger ``limit`` is clamped.
MAX_PAGE = 1000


class MemberPage(_Body):
    """``GET /members?after=&limit=&certs=``: members sorted by id, and where to go on."""

    members: list[Member]
    #: The id to ask the next page after; None when no member follows.
    next: str | None
    #: The query, echoed: the signature covers the path, not the query.
    after: str | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE, strict=True)]
    certs: Annotated[int, Field(ge=0, le=1, strict=True)]


class Resolved(_Body):
    """``GET /resolve/<text>``: the members a PEER text may mean, at most 10, sorted by id."""

    query: str
    members: list[Member]
    more: Annotated[bool, Field(strict=True)]


class ErrorBody(_Body):
    error: str
    message: str = ""


# -- the peer protocol (docs/protocol.md §4) --------------------------------------------

#: Entries of one listing: more than a share of this size is refused.
MAX_LISTED_FILES = 1_000_000

RelPath = Annotated[
    str, StringConstraints(max_length=MAX_PATH_BYTES), AfterValidator(check_relpath)
]


#: Piece sizes a listing may give (docs/protocol.md §4.2): BEP 52's, powers of two from
#: 16 KiB; more than 16 MiB would make one piece a large answer.
MIN_PIECE_SIZE = 16 * 1024
MAX_LISTED_PIECE_SIZE = 16 * 1024 * 1024


def _power_of_two_piece(value: int) -> int:
    if value & (value - 1):
        raise ValueError(f"a piece size is a power of two, not {value}")
    return value


PieceSize = Annotated[
    int,
    Field(ge=MIN_PIECE_SIZE, le=MAX_LISTED_PIECE_SIZE, strict=True),
    AfterValidator(_power_of_two_piece),
]


class SharedFile(_Body):
    """One entry of a member's listing: checked by the rule the server serves by.

    ``root`` and ``piece_size`` (the file's BEP 52 pieces root and the size of
    its pieces) are optional, so that listings of older members still parse;
    a file listed with a root has a piece size, and an empty file has no root.
    """

    path: RelPath
    size: Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)]
    mtime: Annotated[float, Field(allow_inf_nan=False)]
    sha256: Sha256
    root: Sha256 | None = None
    piece_size: PieceSize | None = None

    @model_validator(mode="after")
    def _pieces_fit(self) -> SharedFile:
        if self.root is not None and self.size == 0:
            raise ValueError("an empty file has no root")
        if self.root is not None and self.piece_size is None:
            raise ValueError("a file listed with a root needs its piece_size")
        return self

    def to_json(self) -> dict[str, object]:
        listed: dict[str, object] = {
            "path": self.path,
            "size": self.size,
            "mtime": self.mtime,
            "sha256": self.sha256,
        }
        if self.root is not None:
            listed["root"] = self.root
        if self.piece_size is not None:
            listed["piece_size"] = self.piece_size
        return listed


class Listing(_Body):
    """``GET /files``: parsed once at the edge, with jiter's bounded nesting."""

    generation: Annotated[int, Field(ge=0)] = 0
    files: Annotated[list[SharedFile], Field(max_length=MAX_LISTED_FILES)]


def validation_reason(exc: ValidationError) -> str:
    """The first problem of a pydantic ValidationError, in one line naming the field."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"
