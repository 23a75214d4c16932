"""JSON as the service accepts it from outside: UTF-8, bounded nesting, no NaN/Infinity.

Python's `json` would take `NaN` and `Infinity` literals (which no other JSON reader accepts),
lone UTF-16 surrogates (which cannot be stored or sent on), and nesting deep enough to raise
`RecursionError` instead of `ValueError`. `loads` refuses all three with a `JsonInputError`
whose message says what was wrong; the callers turn it into `bad_request` (PROTOCOL.md).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 32  # arrays/objects inside one another, the outermost counting 1 (PROTOCOL.md)
SAFE_INT = 2**53 - 1  # the largest integer every JSON reader holds exactly (RFC 7493)

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonInputError(ValueError):
    """The text is not JSON the service accepts; the message is safe to send back."""


def _reject_constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not JSON; send numbers as finite decimals")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one, not one per frame


def depth(text: str) -> int:
    """How deeply arrays and objects nest in `text` (brackets inside strings not counted)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """`data` parsed as JSON; `JsonInputError` naming the problem when it is not acceptable."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            raise JsonInputError(f"not UTF-8 (byte 0x{data[err.start]:02x} at offset "
                                 f"{err.start}); send JSON encoded as UTF-8") from None
    else:
        text = data
    # Cheap test first: fewer openers than the bound cannot nest deeper than it.
    if text.count("[") + text.count("{") > max_depth and depth(text) > max_depth:
        raise JsonInputError(f"nested deeper than {max_depth} levels of arrays/objects; "
                             f"flatten the data")
    try:
        value = _DECODER.decode(text)
    except JsonInputError:
        raise
    except RecursionError:  # unreachable with the depth test; kept as the last guard
        raise JsonInputError(f"nested deeper than {max_depth} levels of arrays/objects") from None
    except ValueError as err:  # JSONDecodeError, or an integer of more than 4300 digits
        why = "an integer of more than 4300 digits" if "digits" in str(err) else str(err)
        raise JsonInputError(f"not valid JSON ({_short(why)})") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonInputError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff "
                                 "without its pair); send valid Unicode") from None
    return value


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
