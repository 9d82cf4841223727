"""Error types. Each carries the one line the user sees on stdout (GrootFS convention)."""
from __future__ import annotations


class GrootError(Exception):
    """A failure the user can act on: its message is printed as one line, exit code 1.

    ``hint`` is for messages that must stay GrootFS's exact sentence (Garden and GrootFS's suite
    read stdout): the longer advice goes to the log and, on a terminal, to stderr.
    """

    exit_code = 1

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = hint


class UsageError(GrootError):
    """Bad arguments, flags or configuration."""


class NotFound(GrootError):
    """An image, store, tag or file that does not exist."""


class ImageError(GrootError):
    """An image source is malformed, unsupported or refuses to serve it."""


class LayerError(ImageError):
    """A layer failed verification (size, digest, diffID) or holds a hostile entry.

    The message names the layer; nothing from the layer is kept in the store.
    """


class StoreError(GrootError):
    """The store is missing, belongs to someone else, or its metadata disagrees with the request."""


class NamespaceError(GrootError):
    """The user namespace or the store's keeper could not be set up or joined."""


class QuotaError(GrootError):
    """A disk limit was requested but cannot be applied here."""


class CommandNotFound(GrootError):
    """The command to run does not exist (in the container, or in the store's namespace): 127, as shells."""

    exit_code = 127
