"""Asking a member for pieces: a file's piece layer, and one piece by Range.

The downloader's side of docs/protocol.md §4.6: ``GET /layers/<path>``
answers a file's piece layer, which is taken only once it folds up to the
root the listing gave (``BadPieceLayer`` otherwise: the member lies, or its
copy is damaged); ``GET /files/<path>`` with ``Range: bytes=A-B`` answers one
piece, taken only framed exactly (206, ``Content-Range`` of those bytes,
``Content-Length`` of the piece, the listed sha256 in ``Repr-Digest``) and
read within its length.  Answers under 1 MiB keep the connection alive, so a
member's pieces come one after another on the same few connections.
"""

from __future__ import annotations

from urllib.parse import quote

import trio

from p2pcommon.models import Member
from p2pcommon.service import one_line
from p2pd.peer.client import PeerPool, PeerRefused, PeerUnreachable
from p2pd.share.merkle import (
    HASH_SIZE,
    MAX_PIECE_SIZE,
    BadPieceLayer,
    Pieces,
    is_valid_piece_size,
    piece_count,
)

__all__ = [
    "MAX_PIECE_SIZE",
    "BadPiece",
    "BadPieceLayer",
    "Pieces",
    "fetch_layer",
    "fetch_piece",
    "is_valid_piece_size",
    "piece_count",
]

#: Seconds a whole piece-layer exchange may take, and a whole piece's.
LAYER_TIMEOUT = 30.0
PIECE_TIMEOUT = 60.0
#: Piece layers larger than this are not asked for (a file of 2**21 pieces: 1 TiB
#: in 512 KiB pieces); such a file is fetched from one member.
MAX_LAYER = 64 * 1024 * 1024


class BadPiece(Exception):
    """A member's answer to a piece request is not that piece's bytes as asked (its
    framing, its length); the member does not keep the protocol for pieces."""


def _quoted(path: str) -> str:
    return quote(path)


async def fetch_layer(
    pool: PeerPool, member: Member, path: str, size: int, root: bytes, piece_size: int
) -> Pieces:
    """``member``'s piece layer of ``path``, checked against ``root`` (Pieces).

    BadPieceLayer when what it sent is not that layer (a liar, or a copy
    damaged on disk); PeerUnreachable or PeerRefused when it cannot answer.
    """
    count = piece_count(size, piece_size)
    expected = HASH_SIZE * count
    if count < 2 or expected > MAX_LAYER:
        raise ValueError(f"a file of {count} pieces has no piece layer to fetch")
    try:
        with trio.fail_after(LAYER_TIMEOUT):
            connection, head = await pool.request(member, "/layers/" + _quoted(path))
            try:
                if head.status != 200:
                    body = await connection.body(4096)
                    text = one_line(body[:200].decode("utf-8", "replace"), 200)
                    raise PeerRefused(
                        head.status,
                        f"{member.name} answered {head.status} for the piece layer: {text}",
                    )
                length = head.header("content-length")
                if length != str(expected):
                    raise BadPieceLayer(
                        f"{member.name} announced a piece layer of {length} bytes where "
                        f"{count} pieces need {expected}"
                    )
                layer = await connection.body(expected)
            except BaseException:
                await connection.aclose()
                raise
    except trio.TooSlowError:
        raise PeerUnreachable(
            f"{member.name} did not send the piece layer within {LAYER_TIMEOUT:g} s"
        ) from None
    await pool.release(connection)
    try:
        return Pieces.checked(size, piece_size, root, layer)
    except BadPieceLayer as exc:
        raise BadPieceLayer(f"{member.name} sent a bad piece layer ({exc})") from None


async def fetch_piece(
    pool: PeerPool,
    member: Member,
    path: str,
    sha256_digest: str,
    size: int,
    start: int,
    end: int,
) -> bytes:
    """The bytes ``[start, end)`` of ``member``'s ``path`` (one piece), framed exactly.

    ``sha256_digest``: the Repr-Digest the answer must carry (the listed
    sha256).  BadPiece for an answer that is not those bytes as asked;
    PeerRefused for an error status; PeerUnreachable when it cannot answer
    (the connection is then closed, never reused).
    """
    want = end - start
    headers = {"Range": f"bytes={start}-{end - 1}"}
    try:
        with trio.fail_after(PIECE_TIMEOUT):
            connection, head = await pool.request(member, "/files/" + _quoted(path), headers)
            try:
                if head.status != 206:
                    body = b""
                    if head.status != 200:  # a 200 would be the whole file: not read
                        body = await connection.body(4096)
                    text = one_line(body[:200].decode("utf-8", "replace"), 200)
                    raise PeerRefused(head.status, f"{member.name} answered {head.status}: {text}")
                problem = _framing_problem(head.fields, start, end, size, sha256_digest)
                if problem is not None:
                    raise BadPiece(f"{member.name} {problem}")
                data = await connection.body(want)
                if len(data) != want:
                    raise BadPiece(f"{member.name} sent {len(data)} bytes of a {want}-byte piece")
            except BaseException:
                await connection.aclose()
                raise
    except trio.TooSlowError:
        raise PeerUnreachable(
            f"{member.name} did not send a piece of {want} bytes within {PIECE_TIMEOUT:g} s"
        ) from None
    await pool.release(connection)
    return data


def _framing_problem(
    fields: list[tuple[str, str]], start: int, end: int, size: int, digest: str
) -> str | None:
    """Why an answer's head does not frame exactly the piece asked for, or None."""
    values: dict[str, list[str]] = {}
    for name, value in fields:
        values.setdefault(name, []).append(value.strip())
    if "transfer-encoding" in values:
        return "answered a piece with Transfer-Encoding: a piece is framed by Content-Length"
    if values.get("content-length") != [str(end - start)]:
        return f"announced {values.get('content-length')} bytes for a piece of {end - start}"
    if values.get("content-range") != [f"bytes {start}-{end - 1}/{size}"]:
        return (
            f"answered the range {values.get('content-range')} where bytes "
            f"{start}-{end - 1}/{size} were asked"
        )
    if values.get("repr-digest") != [digest]:
        return "names other bytes than the listed ones in its Repr-Digest (the file changed?)"
    return None
