"""The table: medians of every measurement, then the issue's ratios with ✓/✗."""
from __future__ import annotations

from .util import Sample


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    return f"{v:g}"


def _rows(b) -> list[tuple[str, list[tuple[str, str]]]]:
    imgs = b.images
    def desc(name):
        i = imgs.get(name)
        return f"{len(i.layers)} layers, {i.compressed_bytes / 1e6:.1f} MB gzip, {i.files:,} entries" if i else "?"

    big = b.info.get("scale.big", 1000)
    n = b.info.get("parallel.n", 50)
    return [
        (f"cold, debian image ({desc('debian')}), registry on 127.0.0.1", [
            ("cold.rg", "rootless-groot create (fresh store)"),
            ("cold.podman", "podman pull (fresh storage, rootless overlay)"),
            ("cold.skopeo_umoci", "skopeo copy + umoci unpack --rootless"),
            ("floor.inflate_zlib", "floor: inflate only, zlib"),
            ("floor.inflate_isal", "floor: inflate only, isal"),
            ("floor.tar_xzf", "floor: tar -xzf, layers in parallel"),
            ("floor.isal_tar", "floor: igzip -dc | tar -x, layers in parallel"),
            ("syncfs.on", "create, syncfs per layer (bench runner)"),
            ("syncfs.off", "create, syncfs disabled (bench runner)"),
            ("syncfs.calls", "syncfs calls per create"),
            ("syncfs.call_s", "one syncfs call"),
            ("memory.rg", "peak RSS, any rootless-groot process"),
            ("memory.rg_sum", "peak RSS, rootless-groot processes summed"),
            ("memory.rg_pss", "peak of summed PSS, rootless-groot processes"),
            ("memory.podman", "peak RSS, any podman process"),
        ]),
        ("warm, debian image cached", [
            ("startup.python3", "/usr/bin/python3 -c pass"),
            ("startup.venv_python", "venv python -c pass"),
            ("startup.rg_version", "rootless-groot --version"),
            ("warm.create_nomount", "create --without-mount (docker://)"),
            ("warm.delete_nomount", "delete (not mounted)"),
            ("warm.create_mount", "create, mounted (docker://)"),
            ("warm.delete_mount", "delete (mounted)"),
            ("warm.create_pull_missing", "create --without-mount --pull missing"),
            ("warm.requests", "registry requests of a warm create (docker://)"),
            ("warm.requests_pull_missing", "registry requests, --pull missing"),
            ("warm.stats", "stats"),
            ("warm.list", "list (1 image)"),
            ("warm.podman_create", "podman create"),
            ("warm.podman_rm", "podman rm"),
        ]),
        (f"parallelism: {n} warm creates (mounted)", [
            ("parallel.serial", f"{n} one after the other"),
            ("parallel.concurrent", f"{n} at once"),
        ]),
        (f"scale: 10 vs {big} images in the store", [
            (f"scale.{c}.{op}", f"{op} with {c} images") for op in ("list", "stats", "clean", "create")
            for c in (10, big)
        ]),
        (f"layers: same content ({desc('layers2').split(', ', 1)[1]}) in 2 vs 128 layers, cold", [
            ("layers.2", "rootless-groot create, 2 layers"),
            ("layers.128", "rootless-groot create, 128 layers"),
            ("layers.podman2", "podman pull, 2 layers"),
            ("layers.podman128", "podman pull, 128 layers"),
        ]),
        ("GrootFS vs rootless-groot: both rootless, stores on one loop-mounted XFS, debian image", [
            ("grootfs.cold.rg", "rootless-groot create --without-mount (fresh store)"),
            ("grootfs.cold.gfs", "GrootFS create --without-mount (empty store)"),
            ("grootfs.floor.isal_tar", "floor: igzip -dc | tar -x, layers in parallel"),
            ("grootfs.memory.rg", "peak RSS, any rootless-groot process (cold)"),
            ("grootfs.memory.rg_sum", "peak RSS, rootless-groot processes summed"),
            ("grootfs.memory.rg_pss", "peak of summed PSS, rootless-groot processes"),
            ("grootfs.memory.gfs", "peak RSS, any GrootFS process (cold)"),
            ("grootfs.memory.gfs_sum", "peak RSS, GrootFS processes summed"),
            ("grootfs.memory.gfs_pss", "peak of summed PSS, GrootFS processes"),
            ("grootfs.python3_IS", "floor: /usr/bin/python3 -I -S -c pass"),
            ("grootfs.python3", "/usr/bin/python3 -c pass"),
            ("grootfs.rg.create_nomount", "rootless-groot create --without-mount (warm)"),
            ("grootfs.rg.create_mount", "rootless-groot create, mounted (warm)"),
            ("grootfs.gfs.create", "GrootFS create --without-mount (warm)"),
            ("grootfs.rg.delete_nomount", "rootless-groot delete (not mounted)"),
            ("grootfs.rg.delete_mount", "rootless-groot delete (mounted)"),
            ("grootfs.gfs.delete", "GrootFS delete"),
            ("grootfs.rg.stats", "rootless-groot stats"),
            ("grootfs.gfs.stats", "GrootFS stats"),
            ("grootfs.rg.list", "rootless-groot list (2 images)"),
            ("grootfs.gfs.list", "GrootFS list (2 images)"),
        ]),
        (f"many small files ({desc('smallfiles')}), cold", [
            ("smallfiles.rg", "rootless-groot create"),
            ("smallfiles.podman", "podman pull"),
            ("smallfiles.tar_xzf", "floor: tar -xzf"),
        ]),
    ]


def _median(b, key):
    s: Sample | None = b.results.get(key)
    return s.median if s else None


def _targets(b) -> list[tuple[str, str, str | tuple, float]]:
    """(label, numerator key, denominator key / keys (min of) / None for absolute, limit)."""
    big = b.info.get("scale.big", 1000)
    n = b.info.get("parallel.n", 50)
    t = [
        ("cold create / podman pull", "cold.rg", "cold.podman", 0.3),
        ("cold create / floor (best of tar -xzf, igzip|tar)", "cold.rg", ("floor.tar_xzf", "floor.isal_tar"), 1.5),
        ("warm create --without-mount / python3 -c pass", "warm.create_nomount", "startup.python3", 2),
        ("delete (not mounted) / python3 -c pass", "warm.delete_nomount", "startup.python3", 2),
        ("warm create mounted / python3 -c pass", "warm.create_mount", "startup.python3", 3),
        ("delete (mounted) / python3 -c pass", "warm.delete_mount", "startup.python3", 3),
        ("warm create --pull missing / python3 -c pass", "warm.create_pull_missing", "startup.python3", 2),
        ("stats / python3 -c pass", "warm.stats", "startup.python3", 2),
        ("list / python3 -c pass", "warm.list", "startup.python3", 2),
        ("registry requests of a warm create", "warm.requests", None, 1),
        ("registry requests of a warm create --pull missing", "warm.requests_pull_missing", None, 0),
        ("peak RSS of a cold create (MiB)", "memory.rg", None, 50),
        (f"{n} concurrent / {n} serial warm creates", "parallel.concurrent", "parallel.serial", 0.6),
    ]
    for op in ("list", "stats", "clean", "create"):
        t.append((f"{op}: {big} images / 10 images", f"scale.{big}.{op}", f"scale.10.{op}", 2))
    t.append(("128-layer / 2-layer cold create", "layers.128", "layers.2", 3))
    return t


def _targets_grootfs() -> list[tuple[str, str, str | tuple | None, float]]:
    """Issue 12: against GrootFS in the same run (rootless GrootFS cannot mount: its create is
    always --without-mount, so both of our creates are held against that)."""
    return [
        ("cold create / GrootFS cold create", "grootfs.cold.rg", "grootfs.cold.gfs", 0.5),
        ("warm create --without-mount / GrootFS create", "grootfs.rg.create_nomount", "grootfs.gfs.create", 0.8),
        ("warm create mounted / GrootFS create", "grootfs.rg.create_mount", "grootfs.gfs.create", 0.8),
        ("delete (not mounted) / GrootFS delete", "grootfs.rg.delete_nomount", "grootfs.gfs.delete", 0.8),
        ("delete (mounted) / GrootFS delete", "grootfs.rg.delete_mount", "grootfs.gfs.delete", 0.8),
        ("stats / GrootFS stats", "grootfs.rg.stats", "grootfs.gfs.stats", 0.8),
        ("list / GrootFS list", "grootfs.rg.list", "grootfs.gfs.list", 0.8),
        ("peak RSS of any process, cold create (MiB)", "memory.rg", None, 50),
        ("peak RSS summed over processes, cold create (MiB)", "memory.rg_sum", None, 100),
        ("peak of summed PSS, cold create (MiB)", "memory.rg_pss", None, 100),
        ("  on XFS next to GrootFS: any process", "grootfs.memory.rg", None, 50),
        ("  on XFS next to GrootFS: RSS summed", "grootfs.memory.rg_sum", None, 100),
        ("  on XFS next to GrootFS: summed PSS", "grootfs.memory.rg_pss", None, 100),
    ]


def _ratio_lines(b, targets, width: int) -> list[str]:
    out = []
    for label, num, den, limit in targets:
        nv = _median(b, num)
        if den is None:
            v = nv
        else:
            dens = [_median(b, d) for d in ((den,) if isinstance(den, str) else den)]
            dens = [d for d in dens if d]
            v = nv / min(dens) if nv is not None and dens else None
        if v is None:
            if num in b.results:
                out.append(f"{'':2}{label:{width}} {'—':>8} {'≤ ' + format(limit, 'g'):>8}  ? (not measured)")
            continue
        mark = "✓" if v <= limit else "✗"
        out.append(f"{'':2}{label:{width}} {v:>8.2f} {'≤ ' + format(limit, 'g'):>8}  {mark}")
    return out


def render(b) -> str:
    out = []
    width = 50
    for title, rows in _rows(b):
        present = [(k, lbl) for k, lbl in rows if k in b.results]
        if not present:
            continue
        out.append(f"\n## {title}")
        out.append(f"{'':2}{'measurement':{width}} {'median':>11} {'n':>4}")
        for key, label in present:
            s = b.results[key]
            if s.values:
                line = f"{'':2}{label:{width}} {fmt(s.median, s.unit):>11} {len(s.values):>4}"
                if s.error:
                    line += f"  (then failed: {s.error})"
            else:
                line = f"{'':2}{label:{width}} {'missing':>11} {'':>4}  {s.error or ''}"
            out.append(line)
    if b.info.get("profile.table"):
        out.append("\n## profile of warm commands: time per phase, measured inside (bench runner, python -IS)")
        out.append(b.info["profile.table"])
    out.append("\n## targets (issue 5), medians of this run")
    out.append(f"{'':2}{'ratio':{width}} {'value':>8} {'target':>8}")
    out += _ratio_lines(b, _targets(b), width)
    if any(k.startswith("grootfs.") or k == "memory.rg_sum" for k in b.results):
        out.append("\n## targets (issue 12: against GrootFS, same run), medians")
        out.append(f"{'':2}{'ratio':{width}} {'value':>8} {'target':>8}")
        out += _ratio_lines(b, _targets_grootfs(), width)
    calls, per = _median(b, "syncfs.calls"), b.results.get("syncfs.call_s")
    cold = _median(b, "cold.rg")
    if calls and per and per.values and cold:
        total = sum(per.values) / len(b.results["syncfs.calls"].values)
        out.append(f"{'':2}{'syncfs time per cold create (info, timed calls)':{width}} {total * 1000:>6.0f}ms "
                   f"({total / cold * 100:.0f}% of the cold create)")
    on, off = _median(b, "syncfs.on"), _median(b, "syncfs.off")
    if on and off:
        out.append(f"{'':2}{'create with syncfs − without (info, noisy)':{width}} {(on - off) * 1000:>6.0f}ms "
                   f"({(on / off - 1) * 100:+.0f}%)")
    if b.notes:
        out.append("\n## missing")
        for k, why in sorted(set(b.notes.items())):
            out.append(f"  {k}: {why}")
    return "\n".join(out)
