"""Image references: ``docker://``, ``oci://`` and plain paths to rootfs tarballs."""
from __future__ import annotations

import os

from .errors import UsageError
from .record import Record

DOCKER_HUB = "docker.io"
_HEX = frozenset("0123456789abcdef")
_DIGEST_LENGTHS = {"sha256": 64, "sha512": 128}


def is_digest(text: object) -> bool:
    """``sha256:<64 lowercase hex>`` or ``sha512:<128>``; without ``re``, which warm paths skip."""
    if not isinstance(text, str):
        return False
    algorithm, sep, hex_part = text.partition(":")
    return bool(sep) and _DIGEST_LENGTHS.get(algorithm) == len(hex_part) and _HEX.issuperset(hex_part)


class DockerRef(Record):
    """A registry image, normalised like docker's (``debian`` is ``docker.io/library/debian:latest``)."""

    __slots__ = ("registry", "repository", "tag", "digest")

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What to ask the manifests endpoint for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


class OCILayoutRef(Record):
    """An OCI image layout directory, optionally with a tag (``org.opencontainers.image.ref.name``)."""

    __slots__ = ("path", "tag")

    path: str
    tag: str | None

    def __str__(self) -> str:
        return f"oci://{self.path}" + (f":{self.tag}" if self.tag else "")


class TarballRef(Record):
    """A rootfs tarball on disk (a Cloud Foundry stack): one layer, cached by path, size and mtime."""

    __slots__ = ("path", "given")
    _defaults = {"given": None}

    path: str
    given: str | None  # as the user wrote it (for hints)

    def __str__(self) -> str:
        return self.path


def parse_ref(text: str) -> DockerRef | OCILayoutRef | TarballRef:
    """Parse what Garden or a user passes as ``<rootfs-uri>``."""
    if not text:
        raise UsageError("image reference is empty")
    if text.startswith("docker://"):
        return parse_docker(text[len("docker://"):].lstrip("/"))
    if text.startswith("oci://"):
        return _parse_oci(text[len("oci://"):])
    if "://" in text:
        raise UsageError(f"unsupported image reference `{text}`: use docker://, oci:// or a path to a tarball")
    return TarballRef(os.path.abspath(text), text)


def _parse_oci(rest: str) -> OCILayoutRef:
    if not rest.startswith("/"):
        raise UsageError(f"oci:// needs an absolute path: `oci://{rest}`")
    path, tag = rest, None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        head, _, tag = rest.rpartition(":")
        path = head
        if not tag:
            tag = None
    return OCILayoutRef(os.path.normpath(path), tag)


def parse_docker(text: str) -> DockerRef:
    """Normalise ``[HOST[:PORT]/]REPO[:TAG][@DIGEST]`` like docker and skopeo do."""
    if not text:
        raise UsageError("docker reference is empty")
    name, digest = text, None
    if "@" in text:
        name, _, digest = text.partition("@")
        if not is_digest(digest):
            raise UsageError(f"invalid digest `{digest}` in `{text}`")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not _valid_tag(tag):
            raise UsageError(f"invalid tag `{tag}` in `{text}`")
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, repo_parts = parts[0], parts[1:]
    else:
        registry, repo_parts = DOCKER_HUB, parts
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and len(repo_parts) == 1:
        repo_parts = ["library", *repo_parts]
    if not repo_parts or not all(_valid_component(p) for p in repo_parts):
        raise UsageError(f"invalid repository name in `{text}`")
    if tag is None and digest is None:
        tag = "latest"
    return DockerRef(registry, "/".join(repo_parts), tag, digest)


_ALNUM_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _valid_tag(tag: str) -> bool:
    """``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`` (the distribution spec), without ``re``."""
    return 0 < len(tag) <= 128 and tag[0] in _TAG_CHARS and all(c in _TAG_CHARS or c in ".-" for c in tag)


def _valid_component(part: str) -> bool:
    """``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*`` (the distribution spec), without ``re``."""
    if not part or part[0] not in _ALNUM_LOWER or part[-1] not in _ALNUM_LOWER:
        return False
    separator = ""
    for c in part:
        if c in _ALNUM_LOWER:
            if separator not in ("", ".", "_", "__") and set(separator) != {"-"}:
                return False
            separator = ""
        else:
            separator += c
    return True
