"""The helper's wire format: one strict JSON request in, one JSON answer out.

Request (stdin, at most ``MAX_REQUEST`` bytes, UTF-8, one object, no duplicate or unknown
keys, integers only, no floats, no nesting)::

    {"v": 1, "op": "set",   "store": NAME, "image": ID, "bytes": N}
    {"v": 1, "op": "get",   "store": NAME, "image": ID}
    {"v": 1, "op": "clear", "store": NAME, "image": ID}

The caller names a registered store and an image id: never a path, a project ID or a uid.
Answers are ``{"ok": true, ...}`` or ``{"ok": false, "error": CODE}``, with CODE one of
``ERRORS``. ``denied`` never says why (no oracle telling a missing directory from someone
else's).
"""
from __future__ import annotations

import json
import re
from typing import Any

VERSION = 1
MAX_REQUEST = 4096
MAX_BYTES = 1 << 62  # far beyond any filesystem, far below what overflows a u64 of 512-byte blocks
ERRORS = ("invalid", "denied", "unsupported", "exhausted", "failed")

STORE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
IMAGE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+@:=-]{0,254}")

_FIELDS = {
    "set": {"v": int, "op": str, "store": str, "image": str, "bytes": int},
    "get": {"v": int, "op": str, "store": str, "image": str},
    "clear": {"v": int, "op": str, "store": str, "image": str},
}


class HelperError(Exception):
    """A refusal. ``code`` is one of ERRORS; ``detail`` is only ever shown for non-oracle codes."""

    def __init__(self, code: str, detail: str = ""):
        assert code in ERRORS
        super().__init__(code)
        self.code = code
        self.detail = detail

    def answer(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": False, "error": self.code}
        if self.detail and self.code in ("invalid", "unsupported", "exhausted"):
            out["message"] = self.detail
        return out


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise HelperError("invalid", f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_float(text: str) -> Any:
    raise HelperError("invalid", "numbers must be integers")


def _parse_int(text: str) -> int:
    if len(text) > 20:
        raise HelperError("invalid", "number too large")
    return int(text)


def _reject_constant(text: str) -> Any:
    raise HelperError("invalid", f"{text} is not allowed")


def valid_store_name(name: Any) -> bool:
    return isinstance(name, str) and STORE_NAME.fullmatch(name) is not None


def valid_image_id(image: Any) -> bool:
    return isinstance(image, str) and IMAGE_ID.fullmatch(image) is not None


def parse_request(data: bytes) -> dict[str, Any]:
    """Validate one request; raise HelperError("invalid") on anything unexpected."""
    if not isinstance(data, (bytes, bytearray)):
        raise HelperError("invalid", "request must be bytes")
    if len(data) > MAX_REQUEST:
        raise HelperError("invalid", "request too large")
    if not data.strip():
        raise HelperError("invalid", "empty request")
    # Flat objects only: any nesting is refused before the parser could recurse.
    if data.count(b"[") or data.count(b"{") != 1:
        raise HelperError("invalid", "request must be one flat JSON object")
    try:
        text = bytes(data).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise HelperError("invalid", "request is not UTF-8") from None
    if "\x00" in text:
        raise HelperError("invalid", "NUL in request")
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_float=_reject_float, parse_int=_parse_int,
                         parse_constant=_reject_constant)
    except HelperError:
        raise
    except (ValueError, RecursionError):
        raise HelperError("invalid", "request is not valid JSON") from None
    if not isinstance(doc, dict):
        raise HelperError("invalid", "request must be a JSON object")
    op = doc.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        raise HelperError("invalid", "unknown op")
    fields = _FIELDS[op]
    if set(doc) != set(fields):
        raise HelperError("invalid", f"{op} takes exactly the keys {sorted(fields)}")
    for key, kind in fields.items():
        value = doc[key]
        if type(value) is not kind:  # bool is an int subclass: refuse it too
            raise HelperError("invalid", f"{key} must be {'an integer' if kind is int else 'a string'}")
    if doc["v"] != VERSION:
        raise HelperError("invalid", f"protocol version must be {VERSION}")
    if not valid_store_name(doc["store"]):
        raise HelperError("invalid", "bad store name")
    if not valid_image_id(doc["image"]):
        raise HelperError("invalid", "bad image id")
    if op == "set" and not 1 <= doc["bytes"] <= MAX_BYTES:
        raise HelperError("invalid", "bytes must be between 1 and 2^62")
    return doc


def encode_answer(answer: dict[str, Any]) -> bytes:
    return (json.dumps(answer, separators=(",", ":"), sort_keys=True) + "\n").encode()
