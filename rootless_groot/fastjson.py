"""JSON through CPython's C accelerator (``_json``) alone.

Importing ``json`` pulls in ``re`` and ``enum`` (about 8 ms, a third of a warm command's
budget) for features we never use: its C scanner and encoder need neither. Semantics are
``json``'s, stricter in one way: NaN and Infinity are refused. Without ``_json`` (another
interpreter), the ``json`` module is used.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None

_WHITESPACE = " \t\n\r"


def _no_constants(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")


def _unknown_type(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class _ScanContext:
    """The attributes ``_json.make_scanner`` reads from a ``JSONDecoder``."""

    strict = True
    object_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constants)

    def __init__(self, object_pairs_hook: Callable | None):
        self.object_pairs_hook = object_pairs_hook
        self.memo: dict = {}


def loads(data: str | bytes, object_pairs_hook: Callable | None = None) -> Any:
    """Parse one JSON document (UTF-8 if bytes); ValueError if malformed or followed by data."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8")
    if _json is None:
        import json

        return json.loads(data, object_pairs_hook=object_pairs_hook)
    scan = _json.make_scanner(_ScanContext(object_pairs_hook))
    start = len(data) - len(data.lstrip(_WHITESPACE))
    try:
        obj, end = scan(data, start)
    except StopIteration:
        raise ValueError("Expecting a JSON value") from None
    except SystemError:
        # _json reports a syntax error through json.decoder.JSONDecodeError, but only looks it
        # up if json.decoder is already imported; parse again with the module for the message.
        import json

        json.loads(data, object_pairs_hook=object_pairs_hook)
        raise ValueError("malformed JSON") from None
    if data[end:].strip(_WHITESPACE):
        raise ValueError("Extra data after the JSON document")
    return obj


def dumps(obj: Any) -> str:
    """Compact JSON (``separators=(",", ":")``), ASCII-escaped like ``json.dumps``."""
    if _json is not None:
        try:
            encode = _json.make_encoder({}, _unknown_type, _json.encode_basestring_ascii, None, ":", ",",
                                        False, False, False)
        except TypeError:  # a different C signature: use the module
            encode = None
        if encode is not None:
            return "".join(encode(obj, 0))
    import json

    return json.dumps(obj, separators=(",", ":"), allow_nan=False)
