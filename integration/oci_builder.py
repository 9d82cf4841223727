"""Build OCI image layouts (and plain rootfs tarballs) for tests, with real blobs.

Stdlib only, plus ``zstandard`` for zstd layers. Output is deterministic: fixed
mtimes, gzip header mtime 0, sorted-key compact JSON, tar in PAX format with
empty user/group names.

Quick tour::

    from oci_builder import (Layer, Image, ImageIndex, File, Dir, Symlink, Whiteout,
                             busybox_layer, write_layout, corrupt_blob)

    base = busybox_layer()
    top = Layer([Dir("srv"), File("srv/x", b"hi\\n", uid=33, gid=33),
                 Whiteout("etc/motd")], compression="zstd")
    img = Image([base, top], env=["PATH=/bin", "FOO=bar"], cmd=["/bin/sh"])
    lay = write_layout(tmp / "layout", [img], tag="latest")
    lay.uri("latest")                  # 'oci:///abs/path/layout:latest'
    corrupt_blob(lay.path, img.layers[1].digest)   # content no longer matches

Note: skopeo 1.9's ``oci:`` transport ignores index.json entries with Docker media
types; to get a Docker schema2 image into a registry, build it as OCI and push with
``skopeo copy --format v2s2``. The Docker-typed layouts are for our own reader.

Entries are created from the helpers below; ``name`` is written verbatim into the
tar header, so hostile names (``../evil``, ``/etc/x``, ``a/../../b``) are possible
on purpose: ``File("../evil", b"x")``.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

DEFAULT_MTIME = 1_700_000_000

# Media types
OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
REF_NAME = "org.opencontainers.image.ref.name"

BAD_DIGEST = "sha256:" + "0" * 64


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- entries


@dataclass
class Entry:
    """One tar member. Build these with File/Dir/Symlink/... rather than directly."""

    name: str
    type: bytes  # tarfile.REGTYPE, DIRTYPE, SYMTYPE, LNKTYPE, FIFOTYPE, CHRTYPE, BLKTYPE
    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = DEFAULT_MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes | str] = field(default_factory=dict)
    uname: str = ""
    gname: str = ""

    def __post_init__(self):
        if isinstance(self.content, str):
            self.content = self.content.encode()

    def tarinfo(self) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(self.name)
        ti.type = self.type
        ti.mode = self.mode
        ti.uid, ti.gid = self.uid, self.gid
        ti.uname, ti.gname = self.uname, self.gname
        ti.mtime = self.mtime
        ti.linkname = self.linkname
        ti.devmajor, ti.devminor = self.devmajor, self.devminor
        ti.size = len(self.content) if self.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
        if self.xattrs:
            pax = {}
            for k, v in sorted(self.xattrs.items()):
                if isinstance(v, bytes):
                    v = v.decode("utf-8", "surrogateescape")
                pax["SCHILY.xattr." + k] = v
            ti.pax_headers = pax
        return ti


def File(name, content: bytes | str = b"", mode=0o644, uid=0, gid=0, mtime=DEFAULT_MTIME,
         xattrs=None) -> Entry:
    """A regular file. ``mode`` may include setuid/setgid/sticky bits."""
    if isinstance(content, str):
        content = content.encode()
    return Entry(name, tarfile.REGTYPE, content, mode, uid, gid, mtime, xattrs=dict(xattrs or {}))


def Dir(name, mode=0o755, uid=0, gid=0, mtime=DEFAULT_MTIME, xattrs=None) -> Entry:
    return Entry(name, tarfile.DIRTYPE, b"", mode, uid, gid, mtime, xattrs=dict(xattrs or {}))


def Symlink(name, target, uid=0, gid=0, mtime=DEFAULT_MTIME) -> Entry:
    return Entry(name, tarfile.SYMTYPE, b"", 0o777, uid, gid, mtime, linkname=target)


def Hardlink(name, target, mtime=DEFAULT_MTIME) -> Entry:
    """A hard link to ``target`` (a name earlier in the same layer, as tar writes it)."""
    return Entry(name, tarfile.LNKTYPE, b"", 0o644, 0, 0, mtime, linkname=target)


def Fifo(name, mode=0o644, uid=0, gid=0, mtime=DEFAULT_MTIME) -> Entry:
    return Entry(name, tarfile.FIFOTYPE, b"", mode, uid, gid, mtime)


def CharDev(name, major=1, minor=3, mode=0o666, uid=0, gid=0, mtime=DEFAULT_MTIME) -> Entry:
    """A character device (default: like /dev/null, 1:3)."""
    return Entry(name, tarfile.CHRTYPE, b"", mode, uid, gid, mtime, devmajor=major, devminor=minor)


def BlockDev(name, major=7, minor=0, mode=0o660, uid=0, gid=0, mtime=DEFAULT_MTIME) -> Entry:
    return Entry(name, tarfile.BLKTYPE, b"", mode, uid, gid, mtime, devmajor=major, devminor=minor)


def Whiteout(path, mtime=DEFAULT_MTIME) -> Entry:
    """OCI whiteout: deletes ``path`` from lower layers (``dir/.wh.name``)."""
    d, base = os.path.split(path.rstrip("/"))
    return Entry(os.path.join(d, ".wh." + base), tarfile.REGTYPE, b"", 0o644, 0, 0, mtime)


def Opaque(dirpath, mtime=DEFAULT_MTIME) -> Entry:
    """OCI opaque marker: hides everything under ``dirpath`` from lower layers."""
    return Entry(os.path.join(dirpath.rstrip("/"), ".wh..wh..opq"), tarfile.REGTYPE, b"",
                 0o644, 0, 0, mtime)


def Raw(name, content: bytes = b"", type: bytes = tarfile.REGTYPE, **kw) -> Entry:
    """Any entry with a verbatim (possibly hostile) name: ``Raw('../evil')``, ``Raw('/etc/x')``."""
    return Entry(name, type, content, **kw)


# --------------------------------------------------------------------------- layers


def tar_bytes(entries: Iterable[Entry]) -> bytes:
    """Serialize entries to an uncompressed PAX tar, in the given order, deterministically."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = e.tarinfo()
            tf.addfile(ti, io.BytesIO(e.content) if ti.size else None)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    raise ValueError(f"unknown compression {compression!r}")


class Layer:
    """A layer: entries + compression ("none" | "gzip" | "zstd").

    ``media_type`` defaults from the compression (OCI types); an Image with
    ``docker=True`` switches gzip/none layers to Docker's types.
    ``raw_tar`` replaces the serialized entries with given bytes (e.g. a truncated tar).
    """

    def __init__(self, entries: Sequence[Entry] = (), compression: str = "gzip", *,
                 media_type: str | None = None, raw_tar: bytes | None = None,
                 annotations: dict | None = None):
        self.entries = list(entries)
        self.compression = compression
        self._media_type = media_type
        self.annotations = annotations
        self.tar = raw_tar if raw_tar is not None else tar_bytes(self.entries)
        self.blob = compress(self.tar, compression)
        self.diff_id = sha256_digest(self.tar)
        self.digest = sha256_digest(self.blob)
        self.size = len(self.blob)

    def media_type(self, docker: bool = False) -> str:
        if self._media_type:
            return self._media_type
        if docker:
            if self.compression == "gzip":
                return DOCKER_LAYER_GZIP
            if self.compression == "none":
                return DOCKER_LAYER
            raise ValueError("Docker manifests have no zstd layer type; use OCI")
        return {"none": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}[self.compression]

    def descriptor(self, docker: bool = False) -> dict:
        d = {"mediaType": self.media_type(docker), "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    def write_tar(self, path, compressed: bool = False) -> Path:
        """Write this layer's tar (or its compressed blob) to ``path``."""
        p = Path(path)
        p.write_bytes(self.blob if compressed else self.tar)
        return p


# --------------------------------------------------------------------------- images


class Image:
    """An image manifest + config + layers.

    ``docker=True`` uses Docker schema2 media types for manifest, config and layers.
    Negative-test knobs:
      ``bad_diff_id=i``     config's rootfs.diff_ids[i] is wrong (blob itself is fine)
      ``drop_diff_id=True`` config lists one diff_id fewer than there are layers
      ``bad_layer_digest=i`` manifest's descriptor for layer i names a digest whose
                             blob is written but whose content does not match it
      ``bad_layer_size=i``   manifest's descriptor for layer i has a wrong size
      ``config_extra``       dict merged (deep for "config") into the image config
    """

    def __init__(self, layers: Sequence[Layer], *, env=None, cmd=None, entrypoint=None,
                 working_dir=None, user=None, labels=None, architecture="amd64", os_name="linux",
                 variant=None, docker=False, tag=None, annotations=None,
                 bad_diff_id: int | None = None, drop_diff_id=False,
                 bad_layer_digest: int | None = None, bad_layer_size: int | None = None,
                 config_extra: dict | None = None, created="2023-11-14T22:13:20Z"):
        self.layers = list(layers)
        self.docker = docker
        self.tag = tag
        self.architecture, self.os, self.variant = architecture, os_name, variant
        self.annotations = annotations
        self.bad_layer_digest = bad_layer_digest
        self.bad_layer_size = bad_layer_size

        cfg: dict = {}
        if env is not None:
            cfg["Env"] = list(env)
        if cmd is not None:
            cfg["Cmd"] = list(cmd)
        if entrypoint is not None:
            cfg["Entrypoint"] = list(entrypoint)
        if working_dir is not None:
            cfg["WorkingDir"] = working_dir
        if user is not None:
            cfg["User"] = user
        if labels:
            cfg["Labels"] = dict(labels)
        diff_ids = [l.diff_id for l in self.layers]
        if bad_diff_id is not None:
            diff_ids[bad_diff_id] = sha256_digest(b"not the diff id " + str(bad_diff_id).encode())
        if drop_diff_id:
            diff_ids = diff_ids[:-1]
        config = {
            "architecture": architecture,
            "os": os_name,
            "created": created,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": created, "created_by": f"oci_builder layer {i}"}
                        for i in range(len(self.layers))],
        }
        if variant:
            config["variant"] = variant
        if config_extra:
            extra = copy.deepcopy(config_extra)
            config["config"].update(extra.pop("config", {}))
            config.update(extra)
        self.config = config
        self.config_bytes = canonical_json(config)
        self.config_digest = sha256_digest(self.config_bytes)

        layer_descs = [l.descriptor(docker) for l in self.layers]
        self._bogus_blobs: dict[str, bytes] = {}
        if bad_layer_digest is not None:
            # a blob stored under a name that is not its content's digest
            bogus = self.layers[bad_layer_digest].blob
            wrong = sha256_digest(b"bogus" + bogus)
            layer_descs[bad_layer_digest]["digest"] = wrong
            self._bogus_blobs[wrong] = bogus
        if bad_layer_size is not None:
            layer_descs[bad_layer_size]["size"] += 1
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                       "digest": self.config_digest, "size": len(self.config_bytes)},
            "layers": layer_descs,
        }
        if annotations and not docker:
            manifest["annotations"] = dict(annotations)
        self.manifest = manifest
        self.manifest_bytes = canonical_json(manifest)
        self.digest = sha256_digest(self.manifest_bytes)
        self.media_type = manifest["mediaType"]

    @property
    def platform(self) -> dict:
        p = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            p["variant"] = self.variant
        return p

    def blobs(self) -> dict[str, bytes]:
        out = {l.digest: l.blob for l in self.layers}
        out.update(self._bogus_blobs)
        out[self.config_digest] = self.config_bytes
        out[self.digest] = self.manifest_bytes
        return out

    def descriptor(self, with_platform: bool = False) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest_bytes)}
        if with_platform:
            d["platform"] = self.platform
        return d


class ImageIndex:
    """An image index (OCI) or manifest list (``docker=True``) over images/indexes.

    Used both for multi-platform images and for nesting. Entries carry platforms
    when ``platforms=True`` (the default when it holds more than one image).
    """

    def __init__(self, manifests: Sequence["Image | ImageIndex"], *, tag=None, docker=False,
                 platforms: bool | None = None, annotations=None):
        self.manifests = list(manifests)
        self.tag = tag
        self.docker = docker
        if platforms is None:
            platforms = sum(isinstance(m, Image) for m in self.manifests) > 1
        descs = []
        for m in self.manifests:
            if isinstance(m, Image):
                descs.append(m.descriptor(with_platform=platforms))
            else:
                descs.append(m.descriptor())
        idx = {"schemaVersion": 2,
               "mediaType": DOCKER_MANIFEST_LIST if docker else OCI_INDEX,
               "manifests": descs}
        if annotations and not docker:
            idx["annotations"] = dict(annotations)
        self.index = idx
        self.index_bytes = canonical_json(idx)
        self.digest = sha256_digest(self.index_bytes)
        self.media_type = idx["mediaType"]

    def blobs(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for m in self.manifests:
            out.update(m.blobs())
        out[self.digest] = self.index_bytes
        return out

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.index_bytes)}


def multi_platform_index(amd64: Image, arm64: Image, *, tag=None, docker=False) -> ImageIndex:
    """An index with a linux/amd64 and a linux/arm64 entry (the images' own platforms
    are set accordingly; pass images built with architecture="amd64"/"arm64")."""
    assert amd64.architecture == "amd64" and arm64.architecture == "arm64", \
        "build the images with architecture='amd64' / 'arm64'"
    return ImageIndex([amd64, arm64], tag=tag, docker=docker, platforms=True)


# --------------------------------------------------------------------------- layouts


@dataclass
class Layout:
    path: Path
    index: dict
    refs: dict  # tag -> Image | ImageIndex

    def uri(self, tag: str | None = None) -> str:
        """``oci:///abs/path[:tag]`` as the CLI takes it."""
        return f"oci://{self.path.resolve()}" + (f":{tag}" if tag else "")

    def blob_path(self, digest: str) -> Path:
        algo, hexd = digest.split(":", 1)
        return self.path / "blobs" / algo / hexd


def write_layout(path, images: Sequence["Image | ImageIndex"] = (), tag: str | None = None, *,
                 wrap_in_index: bool = False, extra_blobs: dict[str, bytes] | None = None
                 ) -> Layout:
    """Write an OCI image layout at ``path`` (created; existing blobs are kept).

    Each top-level item gets an ``org.opencontainers.image.ref.name`` annotation from
    its ``.tag``, or from ``tag`` (only when exactly one item is given).
    ``wrap_in_index=True`` nests: index.json -> one index blob -> the items.
    """
    p = Path(path)
    (p / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (p / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    items = list(images)
    if tag is not None:
        if len(items) != 1:
            raise ValueError("tag= needs exactly one image; set .tag on each otherwise")
        items[0].tag = tag
    blobs: dict[str, bytes] = {}
    for it in items:
        blobs.update(it.blobs())
    top_items = items
    if wrap_in_index:
        wrapper = ImageIndex(items, platforms=False)
        blobs.update(wrapper.blobs())
        wrapper.tag = items[0].tag if len(items) == 1 else None
        top_items = [wrapper]
    blobs.update(extra_blobs or {})
    for digest, data in sorted(blobs.items()):
        bp = p / "blobs" / "sha256" / digest.split(":", 1)[1]
        if not bp.exists():
            bp.write_bytes(data)
    manifests = []
    refs = {}
    for it in top_items:
        d = it.descriptor()
        if it.tag:
            d["annotations"] = {REF_NAME: it.tag}
            refs[it.tag] = it
        manifests.append(d)
    if wrap_in_index:
        for it in items:
            if it.tag:
                refs[it.tag] = it
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    (p / "index.json").write_bytes(canonical_json(index))
    return Layout(p, index, refs)


def corrupt_blob(layout_path, digest: str, how: str = "flip") -> Path:
    """Damage a blob in place so its content no longer matches ``digest``.

    how: "flip" (invert one byte in the middle), "truncate" (drop the second half),
    "append" (add trailing garbage), "delete" (remove the file).
    """
    bp = Path(layout_path) / "blobs" / digest.split(":", 1)[0] / digest.split(":", 1)[1]
    data = bytearray(bp.read_bytes())
    if how == "flip":
        i = len(data) // 2
        data[i] ^= 0xFF
    elif how == "truncate":
        data = data[: len(data) // 2]
    elif how == "append":
        data += b"garbage"
    elif how == "delete":
        bp.unlink()
        return bp
    else:
        raise ValueError(how)
    bp.write_bytes(bytes(data))
    return bp


# --------------------------------------------------------------------------- Garden's preloaded+layer


GARDEN_BASE_DIR_ANNOTATION = "org.cloudfoundry.experimental.image.base-directory"


def go_json(obj) -> bytes:
    """Compact JSON in the given key order, as Go's encoding/json writes structs."""
    return json.dumps(obj, separators=(",", ":")).encode()


def write_garden_layout(image_dir, rootfs_tar, layer_url: str, layer_digest_hex: str,
                        layer_path: str = "/home/vcap") -> Layout:
    """The OCI layout Garden (guardian's imageplugin) writes for
    ``preloaded+layer://<rootfs_tar>?layer=<url>&layer_path=<dir>&layer_digest=<hex>``,
    then hands to the image plugin as ``oci://<image_dir>``:

    - no ``oci-layout`` file; index.json, manifest and config mode 0600, every descriptor size 0;
    - base layer: "digest" sha256("<tar path>-<mtime ns>"), type ``...layer.v1.tar``, the blob a
      symlink to the (uncompressed) rootfs tar;
    - top layer: digest ``sha256:<layer_digest>``, type ``...tar+gzip``, only in ``urls``,
      annotated with the base directory;
    - config: amd64/linux, ``rootfs.diff_ids`` = the same two digests (so the diffIDs are not
      the layers' real ones: Garden's users set ``skip_layer_validation``).
    """
    image_dir = Path(image_dir)
    blobs = image_dir / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    rootfs_tar = str(rootfs_tar)
    mtime_ns = os.stat(rootfs_tar).st_mtime_ns
    base_hex = hashlib.sha256(f"{rootfs_tar}-{mtime_ns}".encode()).hexdigest()
    config = go_json({"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": [f"sha256:{base_hex}", f"sha256:{layer_digest_hex}"]}})
    config_hex = hashlib.sha256(config).hexdigest()
    (blobs / config_hex).write_bytes(config)
    os.chmod(blobs / config_hex, 0o600)
    link = blobs / base_hex
    if link.is_symlink():
        link.unlink()
    os.symlink(rootfs_tar, link)
    manifest = go_json({"schemaVersion": 2,
                        "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{config_hex}", "size": 0},
                        "layers": [{"mediaType": OCI_LAYER, "digest": f"sha256:{base_hex}", "size": 0},
                                   {"mediaType": OCI_LAYER_GZIP, "digest": f"sha256:{layer_digest_hex}", "size": 0,
                                    "urls": [layer_url],
                                    "annotations": {GARDEN_BASE_DIR_ANNOTATION: layer_path}}]})
    manifest_hex = hashlib.sha256(manifest).hexdigest()
    (blobs / manifest_hex).write_bytes(manifest)
    os.chmod(blobs / manifest_hex, 0o600)
    index = {"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": f"sha256:{manifest_hex}",
                                                 "size": 0}]}
    (image_dir / "index.json").write_bytes(go_json(index))
    os.chmod(image_dir / "index.json", 0o600)
    return Layout(image_dir, index, {})


# --------------------------------------------------------------------------- rootfs tarballs


def write_rootfs_tarball(path, content: "Sequence[Entry] | Layer | Sequence[Layer]",
                         compression: str = "none", prefix: str = "./") -> Path:
    """A plain rootfs tarball like a CF stack (``cflinuxfs4.tar``): entries named
    ``./bin/...``. Layers are flattened by concatenation (later entries win on
    extraction; whiteouts are not interpreted, so don't pass any)."""
    if isinstance(content, Layer):
        entries = list(content.entries)
    elif content and isinstance(content[0], Layer):
        entries = [e for l in content for e in l.entries]
    else:
        entries = list(content)
    if prefix:
        entries = [dataclasses.replace(e, name=prefix + e.name.lstrip("/")) for e in entries]
        entries.insert(0, Dir(prefix.rstrip("/") or "."))
    data = compress(tar_bytes(entries), compression)
    p = Path(path)
    p.write_bytes(data)
    return p


# --------------------------------------------------------------------------- busybox


BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
BUSYBOX_APPLETS = (
    "sh", "ash", "ls", "cat", "id", "stat", "echo", "env", "true", "false", "test", "[",
    "mkdir", "rmdir", "rm", "cp", "mv", "ln", "touch", "chmod", "chown", "readlink",
    "head", "tail", "wc", "grep", "sed", "find", "du", "df", "dd", "sleep", "ps", "kill",
    "printf", "whoami", "hostname", "uname", "mount", "umount", "sha256sum", "md5sum",
    "xargs", "sort", "uniq", "tr", "cut", "expr", "seq", "yes", "tee", "basename", "dirname",
)
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "www-data:x:33:33:www-data:/var/www:/bin/false\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n"


def find_busybox() -> str:
    for c in BUSYBOX_CANDIDATES:
        if os.path.isfile(c) and not os.path.islink(c):
            return c
    found = shutil.which("busybox")
    if found:
        return os.path.realpath(found)
    raise FileNotFoundError("busybox not found: apt-get install busybox-static")


def busybox_entries(applets: Sequence[str] = BUSYBOX_APPLETS) -> list[Entry]:
    """Entries of a minimal busybox root filesystem (static busybox from the host)."""
    with open(find_busybox(), "rb") as f:
        bb = f.read()
    entries = [
        Dir("bin"), Dir("dev"), Dir("etc"), Dir("home"), Dir("proc"), Dir("root", mode=0o700),
        Dir("sys"), Dir("tmp", mode=0o1777), Dir("usr"), Dir("usr/bin"), Dir("var"),
        Dir("var/www", uid=33, gid=33),
        File("bin/busybox", bb, mode=0o755),
    ]
    entries += [Symlink("bin/" + a, "busybox") for a in applets]
    entries += [
        File("etc/passwd", PASSWD), File("etc/group", GROUP),
        File("etc/hostname", "rootless-groot-test\n"),
    ]
    return entries


def busybox_layer(compression: str = "gzip", applets: Sequence[str] = BUSYBOX_APPLETS) -> Layer:
    """A base layer: /bin/busybox (Debian's busybox-static) + applet symlinks, etc/passwd
    and etc/group with root(0), www-data(33), nobody(65534); /var/www owned by 33."""
    return Layer(busybox_entries(applets), compression)


def busybox_image(extra_layers: Sequence[Layer] = (), compression: str = "gzip", **kw) -> Image:
    """busybox_layer() + extra layers, with a usual Env/Cmd."""
    kw.setdefault("env", ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    kw.setdefault("cmd", ["/bin/sh"])
    return Image([busybox_layer(compression), *extra_layers], **kw)
