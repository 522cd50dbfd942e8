"""The control socket's JSON, without importing the json package.

Importing json imports re, and re imports enum: together ~10 ms, about half
of a `p2pctl status` (bench/cli.py). The parsing and compact writing that
json.loads and json.dumps do are in its C accelerator, _json, which imports
nothing: these functions call it directly, as json itself does (json.loads's
scanner is ``_json.make_scanner``, json.dumps without indent is
``_json.make_encoder``). Where _json is missing or refuses, and for anything
the fast path does not accept, the json package does the work, so results
and errors are json's. tests/p2pctl/test_startup.py compares them.
"""

from __future__ import annotations

from types import SimpleNamespace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: What JSON counts as whitespace (json's own WHITESPACE pattern).
WHITESPACE = " \t\n\r"
INFINITY = float("inf")


def _unserializable(value: object) -> object:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def _c_functions() -> (
    tuple[Callable[[str, int], tuple[Any, int]], Callable[[object], str], Callable[[str], str]]
    | None
):
    """_json's scanner, json.dumps on its encoder and its string writer without
    ensure_ascii; None where they are not json's."""
    try:
        import _json
    except ImportError:
        return None
    # json.JSONDecoder's defaults, as the attributes the C scanner reads.
    context = SimpleNamespace(
        strict=True,
        object_hook=None,
        object_pairs_hook=None,
        parse_float=float,
        parse_int=int,
        parse_constant={
            "-Infinity": -INFINITY,
            "Infinity": INFINITY,
            "NaN": float("nan"),
        }.__getitem__,
    )

    def dumps(value: object) -> str:
        # json.dumps's defaults: a circular check (with a memo of its own, as
        # json makes one per call), ensure_ascii, ": " and ", ", NaN allowed.
        encoder = _json.make_encoder(
            {}, _unserializable, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
        )
        return "".join(encoder(value, 0))

    try:
        scan = _json.make_scanner(context)  # type: ignore[arg-type]  # typeshed: a JSONDecoder
        if scan('{"a": [1.5, "\\u00e9"]}', 0) != ({"a": [1.5, "\u00e9"]}, 22):
            return None
        if dumps({"a": [1.5, "\u00e9", None]}) != '{"a": [1.5, "\\u00e9", null]}':
            return None
    except (AttributeError, TypeError, ValueError, StopIteration):
        return None
    return scan, dumps, _json.encode_basestring


_FAST = _c_functions()


def loads(data: bytes) -> Any:
    """``json.loads(data)``."""
    if _FAST is not None:
        try:
            text = data.decode()
            value, end = _FAST[0](text, len(text) - len(text.lstrip(WHITESPACE)))
            if not text[end:].strip(WHITESPACE):
                return value
        except (ValueError, StopIteration):
            pass  # json says what is wrong; it also reads a BOM, UTF-16 and UTF-32
    import json

    return json.loads(data)


def dumps(value: object) -> str:
    """``json.dumps(value)``."""
    if _FAST is not None:
        return _FAST[1](value)
    import json

    return json.dumps(value)


class _Unhandled(Exception):
    """A value json would write and this module does not: json writes all of it."""


def dumps_indented(value: object) -> str:
    """``json.dumps(value, indent=2, ensure_ascii=False)``: ``--json`` output.

    json writes indented JSON in Python (in json.encoder, which imports re);
    this is the same walk, for the types that `loads` returns.
    """
    if _FAST is not None:
        out: list[str] = []
        try:
            _indented(value, out, "\n")
            return "".join(out)
        except _Unhandled:
            pass
    import json

    return json.dumps(value, indent=2, ensure_ascii=False)


def _indented(value: object, out: list[str], newline: str) -> None:
    # The order of json.encoder's checks: dict and list subclasses are theirs.
    assert _FAST is not None
    if isinstance(value, str):
        out.append(_FAST[2](value))
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = newline + "  "
        separator = "{" + inner
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unhandled
            out += (separator, _FAST[2](key), ": ")
            _indented(item, out, inner)
            separator = "," + inner
        out.append(newline + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        separator = "[" + inner
        for item in value:
            out.append(separator)
            _indented(item, out, inner)
            separator = "," + inner
        out.append(newline + "]")
    elif value is None or isinstance(value, int | float):
        # Numbers, booleans and null read the same compact or indented.
        out.append(_FAST[1](value))
    else:
        raise _Unhandled
