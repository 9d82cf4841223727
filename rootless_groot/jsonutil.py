"""Strict JSON for untrusted documents (manifests, configs, indexes)."""
from __future__ import annotations

from .fastjson import loads
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from .errors import ImageError


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ImageError(f"duplicate key `{key}`")
        out[key] = value
    return out


def loads_strict(data: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object, refusing duplicate keys (two parsers could read different values)."""
    try:
        doc = loads(data, object_pairs_hook=_no_duplicates)
    except ImageError as e:
        raise ImageError(f"{what}: {e}") from None
    except (ValueError, RecursionError):
        raise ImageError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc
