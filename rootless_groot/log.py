"""JSON-lines logging to stderr or a log file, in GrootFS's (lager's) format.

One line per event: ``{"timestamp": RFC3339 with nanoseconds in UTC, "level": "debug" | "info"
| "error" | "fatal", "source": "grootfs", "message": "grootfs.<command>.<event>", "data": {...}}``.
Source and message prefix are GrootFS's so that Garden's and Cloud Foundry's log tooling reads
us unchanged.

Hand-rolled instead of ``logging`` because every warm command pays for its imports; a
log call below the configured level costs one integer comparison and nothing is formatted.
"""
from __future__ import annotations

import sys
import time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

LEVELS = {"debug": 0, "info": 1, "warn": 2, "error": 2, "fatal": 3, "quiet": 4}
# lager has no warning level: warnings are shown from the error threshold on, so say "error".
_WORDS = {"debug": "debug", "info": "info", "warn": "error", "error": "error", "fatal": "fatal"}
SOURCE = "grootfs"

_level = LEVELS["fatal"]
_stream: TextIO = sys.stderr
_session = SOURCE


def configure(level: str | None, log_file: str | None, session: str | None = None) -> None:
    """Set the threshold, destination and session (the command). GrootFS: a log file without a
    level (or with the default `fatal`) means info."""
    global _level, _stream, _session
    if log_file:
        _stream = _open(log_file)
        if not level or level.lower() == "fatal":
            level = "info"
    _level = LEVELS.get((level or "fatal").lower(), LEVELS["fatal"])
    if session:
        _session = f"{SOURCE}.{session}"


def _open(path: str) -> TextIO:
    try:
        return open(path, "a", buffering=1)
    except OSError as e:
        from .errors import UsageError

        raise UsageError(f"failed to configure logger: open {path}: {(e.strerror or str(e)).lower()}") from None


class redirected:
    """Within the block, log to ``path`` (GrootFS's ``--clean-log-file``) at info or more verbose."""

    __slots__ = ("path", "saved")

    def __init__(self, path: str | None):
        self.path = path
        self.saved = None

    def __enter__(self) -> None:
        global _stream, _level
        if self.path:
            self.saved = (_stream, _level)
            _stream, _level = _open(self.path), min(_level, LEVELS["info"])

    def __exit__(self, *exc) -> None:
        global _stream, _level
        if self.saved:
            _stream.close()
            _stream, _level = self.saved


def enabled(level: str) -> bool:
    return LEVELS[level] >= _level


def timestamp(ns: int | None = None) -> str:
    """RFC3339 with nanoseconds, UTC (lager's ``RFC3339Nano`` with all nine digits)."""
    ns = time.time_ns() if ns is None else ns
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def line(level: str, message: str, data: dict[str, Any], session: str | None = None) -> str:
    """One lager JSON line (without the newline)."""
    from .fastjson import dumps

    record = {
        "timestamp": timestamp(),
        "level": _WORDS[level],
        "source": SOURCE,
        "message": f"{session or _session}.{message}",
        "data": _plain(data),
    }
    return dumps(record)


def _emit(level: str, message: str, data: dict[str, Any]) -> None:
    if LEVELS[level] < _level:
        return
    try:
        _stream.write(line(level, message, data) + "\n")
        _stream.flush()
    except (OSError, ValueError):
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


class Step:
    """Logs ``<name>.starting`` and ``<name>.ending`` (with the seconds it took) at ``level``,
    as GrootFS does for each step; costs two comparisons when the level is quieter."""

    __slots__ = ("name", "level", "data", "start")

    def __init__(self, name: str, level: str = "debug", **data: Any):
        self.name = name
        self.level = level
        self.data = data
        self.start = 0

    def __enter__(self) -> Step:
        if LEVELS[self.level] >= _level:
            self.start = time.monotonic_ns()
            _emit(self.level, f"{self.name}.starting", self.data)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self.start:
            took = (time.monotonic_ns() - self.start) / 1e9
            if exc is not None:
                _emit("error", f"{self.name}.failed", dict(self.data, error=str(exc), seconds=round(took, 6)))
            else:
                _emit(self.level, f"{self.name}.ending", dict(self.data, seconds=round(took, 6)))
