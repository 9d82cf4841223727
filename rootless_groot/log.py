"""JSON-lines logging to stderr or a log file, in the spirit of GrootFS's lager output.

Hand-rolled instead of ``logging`` because every warm command pays for its imports; a
log call below the configured level costs one integer comparison.
"""
from __future__ import annotations

import os
import sys
import time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

LEVELS = {"debug": 0, "info": 1, "warn": 2, "error": 2, "fatal": 3, "quiet": 4}

_level = LEVELS["fatal"]
_stream: TextIO = sys.stderr
_component = "rootless-groot"


def configure(level: str | None, log_file: str | None) -> None:
    """Set the threshold and destination. GrootFS: a log file without a level means info."""
    global _level, _stream
    if log_file:
        _stream = open(log_file, "a", buffering=1)
        if not level:
            level = "info"
    _level = LEVELS.get((level or "fatal").lower(), LEVELS["fatal"])


def enabled(level: str) -> bool:
    return LEVELS[level] >= _level


def _emit(level: str, message: str, data: dict[str, Any]) -> None:
    if LEVELS[level] < _level:
        return
    record = {
        "timestamp": f"{time.time():.6f}",
        "source": _component,
        "message": f"{_component}.{message}",
        "log_level": LEVELS[level],
        "pid": os.getpid(),
        "data": data,
    }
    import json  # only when something is logged

    try:
        _stream.write(json.dumps(record, default=str) + "\n")
        _stream.flush()
    except OSError:
        pass


def debug(message: str, **data: Any) -> None:
    _emit("debug", message, data)


def info(message: str, **data: Any) -> None:
    _emit("info", message, data)


def error(message: str, **data: Any) -> None:
    _emit("error", message, data)


def warn(message: str, **data: Any) -> None:
    """A warning the user should see even at the default level: logged and echoed to stderr once."""
    _emit("warn", message, data)
    if _level > LEVELS["warn"]:
        text = data.get("text") or message
        try:
            sys.stderr.write(f"warning: {text}\n")
        except OSError:
            pass
