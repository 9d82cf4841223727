"""Image references: ``docker://``, ``oci://`` and plain paths to rootfs tarballs."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import UsageError

DOCKER_HUB = "docker.io"
DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


@dataclass(frozen=True)
class DockerRef:
    """A registry image, normalised like docker's (``debian`` is ``docker.io/library/debian:latest``)."""

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


@dataclass(frozen=True)
class OCILayoutRef:
    """An OCI image layout directory, optionally with a tag (``org.opencontainers.image.ref.name``)."""

    path: str
    tag: str | None

    def __str__(self) -> str:
        return f"oci://{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class TarballRef:
    """A rootfs tarball on disk (a Cloud Foundry stack): one layer, cached by path, size and mtime."""

    path: str

    def __str__(self) -> str:
        return self.path


ImageRef = DockerRef | OCILayoutRef | TarballRef


def parse_ref(text: str) -> ImageRef:
    """Parse what Garden or a user passes as ``<rootfs-uri>``."""
    if not text:
        raise UsageError("image reference is empty")
    if text.startswith("docker://"):
        return parse_docker(text[len("docker://"):].lstrip("/"))
    if text.startswith("oci://"):
        return _parse_oci(text[len("oci://"):])
    if "://" in text:
        raise UsageError(f"unsupported image reference `{text}`: use docker://, oci:// or a path to a tarball")
    return TarballRef(os.path.abspath(text))


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
        if not DIGEST_RE.match(digest):
            raise UsageError(f"invalid digest `{digest}` in `{text}`")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not _TAG_RE.match(tag):
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
    if not repo_parts or not all(_REPO_COMPONENT_RE.match(p) for p in repo_parts):
        raise UsageError(f"invalid repository name in `{text}`")
    if tag is None and digest is None:
        tag = "latest"
    return DockerRef(registry, "/".join(repo_parts), tag, digest)
