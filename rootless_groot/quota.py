"""The quota hook: disk limits per image through the privileged helper.

Quota work is the only thing that needs root. Until the helper is installed (issue #4),
a requested limit fails with a clear message before anything is downloaded, and usage is
measured by walking the image's ``diff/`` instead.
"""
from __future__ import annotations

from .errors import QuotaError
from .store.context import StoreContext
from .store.images import ImageInfo

MIN_LIMIT = 256 * 1024  # GrootFS raises smaller limits to this


def effective_limit(requested: int) -> int:
    """GrootFS semantics: negative is an error (checked in config), tiny limits are raised."""
    if requested <= 0:
        return 0
    return max(requested, MIN_LIMIT)


def check_available(ctx: StoreContext) -> None:
    """Fail early, before any download, when a limit cannot be enforced on this store."""
    raise QuotaError(
        f"disk limits need project quotas on the store's filesystem and the rootless-groot quota helper; "
        f"neither is set up for {ctx.store.root} (create without --disk-limit-size-bytes, or see the README's quota section)"
    )


def apply_limit(ctx: StoreContext, info: ImageInfo) -> None:
    check_available(ctx)


def release(ctx: StoreContext, info: ImageInfo) -> None:
    """Give the image's project ID back (nothing to do without the helper)."""


def exclusive_usage(ctx: StoreContext, info: ImageInfo) -> int | None:
    """Bytes written by the container, from the quota; None when there is no quota to ask."""
    return None
