"""A member's listing as p2pd keeps it (p2pd/peer/listing.py): compact, and found by search.

The searches rely on the kept form's shape; names that look like that shape
(quotes, braces, ``{"path":`` itself), non-ASCII names and repeated paths
must find exactly what a scan of decoded entries finds.  Large bodies are
checked by a real child process.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from p2pcommon.models import Listing, SharedFile
from p2pd.peer.listing import IN_THREAD_MAX, MemberListing
from p2pd.peer.listing_child import InvalidBody, check_in_child

NAMES = [
    "a.txt",
    'docs/"quoted" name.txt',
    'docs/{"path":"evil.txt",',
    'x/"sha256":"' + "0" * 64 + '"}',
    "docs/sub/deep.bin",
    "docs-other/b.txt",
    "ünïcödé/日本語.txt",
    "emoji/🎉.png",
    "docs/a.txt",
]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entries(names: list[str]) -> list[dict[str, object]]:
    return [
        {"path": name, "size": i, "mtime": 1.5 * i, "sha256": sha(name)}
        for i, name in enumerate(names)
    ]


def body_of(files: list[dict[str, object]], generation: int = 7) -> bytes:
    # ensure_ascii=False: a member may send UTF-8 as it is; we keep escapes.
    return json.dumps({"generation": generation, "files": files}, ensure_ascii=False).encode()


def test_searches_find_what_a_scan_of_the_entries_finds() -> None:
    files = entries(NAMES + ["docs/a.txt"])  # a member may repeat a path
    kept = MemberListing.validated(body_of(files))
    decoded = Listing.model_validate_json(body_of(files)).files
    assert kept.generation == 7 and len(kept) == len(decoded)
    assert kept.files == decoded
    for name in NAMES + ["nope", "docs", "docs/"]:
        assert kept.with_path(name) == [f for f in decoded if f.path == name], name
    for prefix in ["docs/", "docs", 'docs/{"path":', "ü", "", "x/", "zzz"]:
        assert kept.under(prefix) == [f for f in decoded if f.path.startswith(prefix)], prefix
        assert kept.has_under(prefix) == any(f.path.startswith(prefix) for f in decoded)
    for f in decoded:
        assert kept.path_of(f.sha256, f.size) in {g.path for g in decoded if g.sha256 == f.sha256}
    assert kept.path_of("0" * 64, 0) is None  # only inside a name
    assert kept.path_of(sha("a.txt"), 999) is None  # same bytes, another size


def test_the_kept_form_is_the_answer_of_ls_as_json() -> None:
    files = entries(NAMES)
    kept = MemberListing.validated(body_of(files))
    expected = [SharedFile.model_validate(f).to_json() for f in files]
    assert json.loads(kept.data) == expected
    assert kept.data.isascii()  # the control socket's answers escape non-ASCII
    assert kept.nbytes < 2 * len(body_of(files))


def test_an_empty_listing() -> None:
    kept = MemberListing.validated(b'{"files": []}')
    assert (len(kept), kept.generation, kept.files, kept.under("")) == (0, 0, [], [])
    assert json.loads(kept.data) == []


def many(count: int) -> list[dict[str, object]]:
    return [
        {"path": f"d{i // 1000}/f{i}.bin", "size": i, "mtime": 0, "sha256": sha(str(i))}
        for i in range(count)
    ]


async def test_a_large_body_is_checked_by_a_child_to_the_same_result() -> None:
    body = body_of(many(20_000))
    assert len(body) > IN_THREAD_MAX
    kept = await check_in_child(body)
    same = MemberListing.validated(body)
    assert (kept.generation, bytes(kept.data), list(kept.offsets)) == (
        same.generation,
        same.data,
        list(same.offsets),
    )
    assert kept.with_path("d12/f12345.bin")[0].sha256 == sha("12345")


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ([{"path": "../up", "size": 1, "mtime": 0, "sha256": "0" * 64}], "files.0.path"),
        ([{"path": "a", "size": 1, "mtime": 0, "sha256": "A" * 64}], "files.0.sha256"),
        ([{"path": "a", "size": -1, "mtime": 0, "sha256": "0" * 64}], "files.0.size"),
    ],
)
async def test_a_child_says_what_is_invalid_as_the_thread_does(
    files: list[dict[str, object]], problem: str
) -> None:
    body = body_of(many(10_000) + files)
    with pytest.raises(InvalidBody) as caught:
        await check_in_child(body)
    assert str(caught.value).startswith(problem.replace("0", "10000"))
