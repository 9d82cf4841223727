"""Build the benchmark images as OCI layouts, once, and cache them.

Run as root (debootstrap, chroot apt-get, an overlay mount to capture layer 2 as a diff).
Everything lands under ``CACHE`` (default /var/tmp/rootless-groot-bench/cache), world-readable,
one directory per image with a ``.done`` marker written last; a layout is rebuilt only when its
marker is missing or names another recipe version.

Images (tag ``latest`` in each layout):

- ``debian``: ``debootstrap --variant=minbase bookworm`` from the mirror this machine's apt
  uses (layer 1), then ``apt-get install python3`` in a chroot on an overlay over it; the
  overlay's upper dir is layer 2. The downloaded .deb files are removed from both; apt's lists
  and caches are kept, as a plain ``RUN apt-get install`` leaves them: about 118 MB gzip and
  9,100 entries, the issue's "113 MB, 8,300 files" kind of image. (whiteouts and opaque dirs converted to OCI ``.wh.`` names).
- ``smallfiles``: one layer of 100,000 small files in 1,000 directories.
- ``layers2`` / ``layers128``: the same 2,048 files (~64 MiB, about half compressible)
  split into 2 or 128 layers.

Layers are PAX tars written by ``tarfile`` (numeric owners, sorted names), gzip level 6
(Docker's default), mtime 0 in the gzip header.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("RG_BENCH_CACHE", "/var/tmp/rootless-groot-bench/cache"))
RECIPE = {"debian": "3", "smallfiles": "1", "layers2": "1", "layers128": "1"}
SUITE = "bookworm"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MTIME = 1_700_000_000
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]


@dataclass
class BuiltImage:
    name: str
    path: Path  # the OCI layout
    layers: list[dict]  # {"digest", "size", "diff_id", "files", "tar_size"}

    @property
    def blob_paths(self) -> list[Path]:
        return [self.path / "blobs" / "sha256" / l["digest"].split(":", 1)[1] for l in self.layers]

    @property
    def compressed_bytes(self) -> int:
        return sum(l["size"] for l in self.layers)

    @property
    def files(self) -> int:
        return sum(l["files"] for l in self.layers)

    def uri(self) -> str:
        return f"oci://{self.path}:latest"


# --------------------------------------------------------------------------- layer writing

class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``out`` (or nowhere)."""

    def __init__(self, out=None):
        self.out, self.h, self.n = out, hashlib.sha256(), 0

    def writable(self):
        return True

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        if self.out is not None:
            self.out.write(b)
        return len(b)


class LayerWriter:
    """``with LayerWriter(dir) as lw: lw.add(tarinfo, fileobj)`` -> lw.desc (digest, diff_id...)."""

    def __init__(self, blobs_dir: Path):
        self.blobs_dir = blobs_dir
        self.files = 0

    def __enter__(self):
        self.tmp = tempfile.NamedTemporaryFile(dir=self.blobs_dir, delete=False, prefix=".tmp-")
        self.compressed = _Hashing(self.tmp)
        self.gz = gzip.GzipFile(fileobj=self.compressed, mode="wb", compresslevel=6, mtime=0, filename="")
        self.plain = _Hashing(self.gz)
        self.tar = tarfile.open(fileobj=self.plain, mode="w|", format=tarfile.PAX_FORMAT)
        return self

    def add(self, ti: tarfile.TarInfo, fileobj=None) -> None:
        ti.uname = ti.gname = ""
        self.tar.addfile(ti, fileobj)
        self.files += 1

    def __exit__(self, et, ev, tb):
        if et is not None:
            self.tmp.close()
            os.unlink(self.tmp.name)
            return False
        self.tar.close()
        self.gz.close()
        self.tmp.close()
        digest = "sha256:" + self.compressed.h.hexdigest()
        os.chmod(self.tmp.name, 0o644)
        os.rename(self.tmp.name, self.blobs_dir / digest.split(":", 1)[1])
        self.desc = {"digest": digest, "size": self.compressed.n,
                     "diff_id": "sha256:" + self.plain.h.hexdigest(), "files": self.files,
                     "tar_size": self.plain.n}
        return False


def _json_blob(blobs: Path, obj) -> dict:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    p = blobs / digest.split(":", 1)[1]
    p.write_bytes(data)
    os.chmod(p, 0o644)
    return {"digest": digest, "size": len(data)}


def write_layout(path: Path, layers: list[dict], name: str) -> BuiltImage:
    """index.json + manifest + config for ``layers`` (already in ``path/blobs/sha256``)."""
    blobs = path / "blobs" / "sha256"
    config = {
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ENV, "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layers]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"rootless-groot bench {name} {i}"}
                    for i in range(len(layers))],
    }
    cfg = _json_blob(blobs, config)
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **cfg},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": l["digest"], "size": l["size"]} for l in layers],
    }
    man = _json_blob(blobs, manifest)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, **man,
                            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return BuiltImage(name, path, layers)


def _fresh_layout(name: str) -> Path:
    path = CACHE / name
    if path.exists():
        shutil.rmtree(path)
    (path / "blobs" / "sha256").mkdir(parents=True)
    return path


def _finish(img: BuiltImage) -> BuiltImage:
    (img.path / "layers.json").write_text(json.dumps(img.layers))
    (img.path / ".done").write_text(RECIPE[img.name])
    subprocess.run(["chmod", "-R", "a+rX", str(CACHE)], check=True)
    return img


def load(name: str) -> BuiltImage | None:
    path = CACHE / name
    try:
        if (path / ".done").read_text() != RECIPE[name]:
            return None
        return BuiltImage(name, path, json.loads((path / "layers.json").read_text()))
    except OSError:
        return None


# --------------------------------------------------------------------------- tar of a directory

def _tar_tree(lw: LayerWriter, root: Path, *, overlay_upper: bool = False,
              skip_devices: bool = True) -> None:
    """Add ``root``'s content (names relative to it, sorted, depth-first) to the layer.

    ``overlay_upper``: ``root`` is an overlayfs upper dir written as real root: a 0:0 char
    device is a whiteout (``.wh.NAME``), ``trusted.overlay.opaque=y`` makes a dir opaque.
    """
    inodes: dict[tuple[int, int], str] = {}

    def add_entry(full: str, rel: str) -> bool:
        st = os.lstat(full)
        mode = st.st_mode
        if overlay_upper and stat.S_ISCHR(mode) and st.st_rdev == 0:
            d, base = os.path.split(rel)
            ti = tarfile.TarInfo(os.path.join(d, ".wh." + base))
            ti.mtime = int(st.st_mtime)
            lw.add(ti)
            return False
        if skip_devices and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            return False
        ti = tarfile.TarInfo(rel)
        ti.mode = stat.S_IMODE(mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.mtime = int(st.st_mtime)
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
            lw.add(ti)
            if overlay_upper:
                try:
                    if os.getxattr(full, "trusted.overlay.opaque", follow_symlinks=False) == b"y":
                        o = tarfile.TarInfo(os.path.join(rel, ".wh..wh..opq"))
                        o.mtime = MTIME
                        lw.add(o)
                except OSError:
                    pass
            return True
        if stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(full)
            lw.add(ti)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in inodes:
                ti.type = tarfile.LNKTYPE
                ti.linkname = inodes[key]
                lw.add(ti)
            else:
                inodes[key] = rel
                ti.size = st.st_size
                with open(full, "rb") as f:
                    lw.add(ti, f)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
            lw.add(ti)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            lw.add(ti)
        return False

    def walk(d: str, rel: str) -> None:
        for name in sorted(os.listdir(d)):
            full = os.path.join(d, name)
            r = os.path.join(rel, name) if rel else name
            if add_entry(full, r) and not os.path.ismount(full):
                walk(full, r)

    walk(str(root), "")


# --------------------------------------------------------------------------- debian

def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(p.read_text())
        except OSError:
            pass
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.findall(r"^URIs:\s*(.+)$", stanza, re.M)
            suites = re.findall(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites[0].split():
                for u in uris[0].split():
                    if u.rstrip("/").endswith("/debian"):
                        return u
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if m.group(2) == SUITE and m.group(1).rstrip("/").endswith("/debian"):
                return m.group(1)
    return "http://deb.debian.org/debian"


def build_debian(log=print) -> BuiltImage:
    mirror = apt_mirror()
    path = _fresh_layout("debian")
    blobs = path / "blobs" / "sha256"
    work = Path(tempfile.mkdtemp(prefix="debian-build-", dir=CACHE.parent))
    base, upper, ovl_work, merged = work / "base", work / "upper", work / "work", work / "merged"
    mounts: list[Path] = []
    try:
        for d in (upper, ovl_work, merged):
            d.mkdir()
        log(f"  debootstrap --variant=minbase {SUITE} from {mirror} (a few minutes, once)")
        subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(base), mirror],
                       check=True, stdout=subprocess.DEVNULL, timeout=1800)
        for deb in (base / "var/cache/apt/archives").glob("*.deb"):  # as `apt-get clean` would
            deb.unlink()
        with LayerWriter(blobs) as lw:
            _tar_tree(lw, base)
        layer1 = lw.desc
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={base},upperdir={upper},workdir={ovl_work}", str(merged)], check=True)
        mounts.append(merged)
        subprocess.run(["mount", "-t", "proc", "proc", str(merged / "proc")], check=True)
        mounts.append(merged / "proc")
        subprocess.run(["mount", "--bind", "/dev", str(merged / "dev")], check=True)
        mounts.append(merged / "dev")
        shutil.copy("/etc/resolv.conf", merged / "etc/resolv.conf")
        log("  chroot apt-get install python3")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        subprocess.run(["chroot", str(merged), "apt-get", "update", "-q"], check=True, env=env,
                       stdout=subprocess.DEVNULL, timeout=900)
        subprocess.run(["chroot", str(merged), "apt-get", "install", "-y", "-q", "python3"], check=True,
                       env=env, stdout=subprocess.DEVNULL, timeout=1800)
        for deb in (merged / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        for m in reversed(mounts):
            subprocess.run(["umount", str(m)], check=True)
        mounts.clear()
        # the bind-mount points and the resolv.conf copy are not part of the image
        with LayerWriter(blobs) as lw:
            _tar_tree(lw, upper, overlay_upper=True)
        layer2 = lw.desc
        return _finish(write_layout(path, [layer1, layer2], "debian"))
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", str(m)], check=False)
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- synthetic

def _dir_ti(name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
    return ti


def _file_ti(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = size, 0o644, MTIME
    return ti


WORDS = [w.encode() for w in ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu "
                              "xi omicron pi rho sigma tau upsilon phi chi psi omega").split()]


def _content(rng: random.Random, size: int) -> bytes:
    """About half random bytes, half words: compresses to roughly 55-60%."""
    half = size // 2
    words = b" ".join(rng.choice(WORDS) for _ in range(size // 5 + 1))
    return (rng.randbytes(half) + words)[:size]


def build_smallfiles(n_files: int = 100_000, per_dir: int = 100) -> BuiltImage:
    path = _fresh_layout("smallfiles")
    rng = random.Random(1)
    with LayerWriter(path / "blobs" / "sha256") as lw:
        lw.add(_dir_ti("data"))
        for i in range(n_files):
            if i % per_dir == 0:
                lw.add(_dir_ti(f"data/d{i // per_dir:04d}"))
            data = _content(rng, rng.randint(64, 1024))
            lw.add(_file_ti(f"data/d{i // per_dir:04d}/f{i:06d}", len(data)), io.BytesIO(data))
    return _finish(write_layout(path, [lw.desc], "smallfiles"))


def build_split(name: str, n_layers: int, n_files: int = 2048, total: int = 64 << 20) -> BuiltImage:
    """``n_files`` files, ``total`` bytes, file i in layer i % n_layers: the same content for
    every ``n_layers``."""
    path = _fresh_layout(name)
    layers = []
    for k in range(n_layers):
        with LayerWriter(path / "blobs" / "sha256") as lw:
            lw.add(_dir_ti(f"l{k:03d}"))
            for i in range(k, n_files, n_layers):
                rng = random.Random(i)  # per-file seed: same bytes whatever the split
                data = _content(rng, total // n_files)
                lw.add(_file_ti(f"l{k:03d}/f{i:05d}", len(data)), io.BytesIO(data))
        layers.append(lw.desc)
    return _finish(write_layout(path, layers, name))


BUILDERS = {
    "debian": build_debian,
    "smallfiles": lambda log=print: build_smallfiles(),
    "layers2": lambda log=print: build_split("layers2", 2),
    "layers128": lambda log=print: build_split("layers128", 128),
}


def ensure(names=tuple(BUILDERS), log=print) -> dict[str, BuiltImage]:
    """Load each cached image, building the missing ones (root needed for ``debian``);
    one builder at a time (a lock file in the cache)."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE.parent, 0o755)
    os.chmod(CACHE, 0o755)
    out = {}
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in names:
            img = load(name)
            if img is None:
                log(f"building image {name!r} into {CACHE / name}")
                img = BUILDERS[name](log=log)
            out[name] = img
    return out
