"""The scenarios. Each one records Samples in ``Bench.results`` under a key (see report.py).

Everything here runs as the unprivileged user. Within a scenario the tools are measured
round-robin (rootless-groot, the peers, the floors, then again), so a slow minute of the
machine hits them all alike.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import grootfs as gfs
from . import peers
from .images import BuiltImage
from .registry import Registry
from .util import Sample, StepFailed, base_env, kill_pidfile, log, rm_tree, run, timed

DEBIAN_PY = "/usr/bin/python3"

# Runs the CLI with rootless_groot.syscalls.syncfs replaced: RG_BENCH_SYNCFS=off makes it a
# no-op, =time appends each call's duration to RG_BENCH_SYNCFS_LOG. Forked workers inherit it.
SYNCFS_RUNNER = r"""
import os, sys, time
import rootless_groot.syscalls as s
_orig = s.syncfs
def _timed(fd):
    t = time.perf_counter(); _orig(fd)
    with open(os.environ["RG_BENCH_SYNCFS_LOG"], "a") as f:
        f.write(f"{time.perf_counter() - t}\n")
s.syncfs = (lambda fd: None) if os.environ["RG_BENCH_SYNCFS"] == "off" else _timed
from rootless_groot.cli import main
sys.argv[0] = "rootless-groot"
sys.exit(main(sys.argv[1:]))
"""

# Runs argv; prints the RSS high-water mark (KiB) of every process in its tree: polls VmHWM
# of all descendants (as a child subreaper, the detached ones too) and adds
# RUSAGE_CHILDREN.ru_maxrss for the short-lived ones that were waited for; the sum of the
# polled processes' peaks (which counts the pages a fork shares with its parent once per
# process); and the peak of the tree's summed PSS (shared pages split among their sharers:
# what the tree held at once).
PEAK_RSS_WRAPPER = r"""
import ctypes, json, os, resource, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
me = os.getpid()
peak = {}
def scan():
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                parents[int(d)] = (int(st[st.rfind(")") + 2:].split()[1]), st[st.find("(") + 1:st.rfind(")")])
            except (OSError, ValueError):
                pass
    pss = 0
    for p, (pp, name) in parents.items():
        q = pp
        while q in parents and q not in (me, 0, 1):
            q = parents[q][0]
        if q != me:
            continue
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        kib = int(line.split()[1])
                        if kib > peak.get(p, (0, ""))[0]:
                            peak[p] = (kib, name)
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except (OSError, ValueError):
            pass
    global pss_peak
    pss_peak = max(pss_peak, pss)
pss_peak = 0
status = None
while status is None:
    scan()
    r, st = os.waitpid(pid, os.WNOHANG)
    if r:
        status = st
    else:
        time.sleep(0.01)
scan()
while True:
    try:
        if os.waitpid(-1, os.WNOHANG)[0] == 0:
            break
    except ChildProcessError:
        break
ru = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
top = sorted(peak.values(), reverse=True)[:5]
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "polled_kib": top[0][0] if top else 0,
                  "rusage_children_kib": ru, "top": top, "sum_kib": sum(k for k, _ in peak.values()), "pss_kib": pss_peak}))
"""


@dataclass
class Reps:
    cold: int = 4
    warm: int = 15
    parallel_n: int = 50
    parallel_reps: int = 2
    scale_big: int = 1000
    scale_reps: int = 7
    layers: int = 3
    smallfiles: int = 2
    syncfs: int = 3
    memory: int = 2
    quick: bool = False  # fewer peers where they are slow (podman on 100k files, 128 layers)

    @classmethod
    def quick_run(cls) -> "Reps":
        return cls(cold=1, warm=5, parallel_n=10, parallel_reps=1, scale_big=50, scale_reps=3, layers=1,
                   smallfiles=1, syncfs=1, memory=1, quick=True)


@dataclass
class Bench:
    work: Path
    cli: str  # the rootless-groot entry point of the venv under test
    images: dict[str, BuiltImage]
    reps: Reps
    registry: Registry | None = None
    results: dict[str, Sample] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # key -> why it is missing
    info: dict[str, object] = field(default_factory=dict)
    podman_problem: str | None = None
    _n: int = 0

    @property
    def home(self) -> Path:
        return self.work / "home"

    @property
    def env(self) -> dict[str, str]:
        return base_env(self.home)

    def fresh(self, what: str) -> Path:
        return self.fresh_in(self.work, what)

    def fresh_in(self, parent: Path, what: str) -> Path:
        self._n += 1
        return parent / f"{what}-{self._n}"

    def ref(self, name: str) -> str:
        return f"docker://{self.registry.ref(name)}"

    def sample(self, key: str, unit: str = "s") -> Sample:
        return self.results.setdefault(key, Sample(unit=unit))

    def missing(self, key: str, why: str) -> None:
        self.notes[key] = why
        self.sample(key).error = self.sample(key).error or why


class RG:
    """The rootless-groot CLI on one store."""

    def __init__(self, b: Bench, store: Path, argv0: list[str] | None = None, env: dict | None = None):
        self.b, self.store = b, store
        self.argv0 = argv0 or [b.cli]
        self.env = env or b.env

    def argv(self, *args: str) -> list[str]:
        return [*self.argv0, "--store", str(self.store), *args]

    def create_argv(self, image: str, image_id: str, *flags: str) -> list[str]:
        return self.argv("create", "--insecure-registry", self.b.registry.host, *flags, self.b.ref(image), image_id)

    def create(self, image: str, image_id: str, *flags: str, timeout=900) -> float:
        return timed(self.create_argv(image, image_id, *flags), env=self.env, timeout=timeout)

    def time(self, *args: str, timeout=300) -> float:
        return timed(self.argv(*args), env=self.env, timeout=timeout)

    def destroy(self) -> None:
        if self.store.exists():
            run([self.b.cli, "--store", str(self.store), "delete-store"], env=self.b.env, timeout=600, check=False)
            kill_pidfile(self.store / "run" / "keeper.pid")
            rm_tree(self.store)


def round_robin(b: Bench, reps: int, entries: dict[str, tuple], settle: bool = False) -> None:
    """entries: key -> (fn, cleanup or None). Runs fn() reps times per key, interleaved, each
    round starting one entry later (what runs after an idle moment or after a given peer
    changes from round to round); a key whose fn failed is not run again. ``settle``: write
    back what the previous run left dirty before each run (untimed): cold creates that sync
    must not pay for a peer's or a floor's unsynced files."""
    keys = list(entries)
    for i in range(reps):
        shift = i % len(keys) if keys else 0
        for key in keys[shift:] + keys[:shift]:
            fn, cleanup = entries[key]
            s = b.sample(key)
            for attempt in (1, 2):  # one retry: the shared test venv may be mid-reinstall
                if s.error:
                    break
                try:
                    if settle:
                        os.sync()
                    s.values.append(fn())
                    break
                except Exception as e:  # noqa: BLE001 - reported in the table
                    msg = str(e)[:300] or type(e).__name__
                    log(f"    {key} (attempt {attempt}): {msg}")
                    if attempt == 2:
                        s.error = msg
                    else:
                        time.sleep(2)
                finally:
                    if cleanup:
                        try:
                            cleanup()
                        except Exception as e:  # noqa: BLE001
                            log(f"    {key} cleanup: {e}")


def _cold_rg(b: Bench, image: str, flags=(), argv0=None, env=None, where: Path | None = None):
    holder = {}

    def fn():
        rg = RG(b, b.fresh_in(where or b.work, "store-cold"), argv0, env)
        holder["rg"] = rg
        return rg.create(image, "cold", *flags)

    def cleanup():
        if "rg" in holder:
            holder.pop("rg").destroy()

    return fn, cleanup


def _podman_pull(b: Bench, image: str):
    holder = {}

    def fn():
        pm = peers.Podman(b.fresh("podman-cold"), b.home).prepare()
        holder["pm"] = pm
        return pm.pull(b.registry.ref(image))

    def cleanup():
        if "pm" in holder:
            holder.pop("pm").reset()

    return fn, cleanup


# --------------------------------------------------------------------------- scenarios

def startup(b: Bench) -> None:
    """Interpreter start-up floors."""
    venv_py = str(Path(b.cli).parent / "python")
    round_robin(b, b.reps.warm, {
        "startup.python3": (lambda: timed([DEBIAN_PY, "-c", "pass"], env=b.env), None),
        "startup.venv_python": (lambda: timed([venv_py, "-c", "pass"], env=b.env), None),
        "startup.rg_version": (lambda: timed([b.cli, "--version"], env=b.env), None),
    })


def cold(b: Bench) -> None:
    """Cold create of the Debian image vs podman pull vs skopeo+umoci vs the floors."""
    img = b.images["debian"]
    blobs = img.blob_paths
    entries = {"cold.rg": _cold_rg(b, "debian")}
    if b.podman_problem:
        b.missing("cold.podman", b.podman_problem)
    else:
        entries["cold.podman"] = _podman_pull(b, "debian")
    miss = peers.missing_tools("skopeo", "umoci")
    if b.reps.quick:
        pass
    elif miss:
        b.missing("cold.skopeo_umoci", f"not installed: {', '.join(miss)}")
    else:
        entries["cold.skopeo_umoci"] = (
            lambda: peers.skopeo_umoci(b.registry.ref("debian"), b.fresh("skopeo"), b.env), None)
    entries["floor.inflate_zlib"] = (lambda: peers.inflate_only(blobs, "zlib"), None)
    entries["floor.tar_xzf"] = (lambda: peers.tar_extract_parallel(blobs, b.fresh("floor"), b.env, "gzip"), None)
    if peers.isal_available():
        entries["floor.inflate_isal"] = (lambda: peers.inflate_only(blobs, "isal"), None)
        entries["floor.isal_tar"] = (lambda: peers.tar_extract_parallel(blobs, b.fresh("floor"), b.env, "isal"),
                                     None)
    else:
        b.missing("floor.inflate_isal", "python-isal not installed in the bench venv")
        b.missing("floor.isal_tar", "python-isal not installed in the bench venv")
    round_robin(b, b.reps.cold, entries, settle=True)


def syncfs(b: Bench) -> None:
    """Cold create with syncfs per layer (timed) vs without (a bench-only runner patches it)."""
    venv_py = str(Path(b.cli).parent / "python")
    logf = b.work / "syncfs.log"
    runner = [venv_py, "-c", SYNCFS_RUNNER]
    env_on = dict(b.env, RG_BENCH_SYNCFS="time", RG_BENCH_SYNCFS_LOG=str(logf))
    env_off = dict(b.env, RG_BENCH_SYNCFS="off", RG_BENCH_SYNCFS_LOG=str(logf))
    on_fn, on_clean = _cold_rg(b, "debian", argv0=runner, env=env_on)
    calls = b.sample("syncfs.calls", unit="n")
    per_call = b.sample("syncfs.call_s")

    def on():
        logf.unlink(missing_ok=True)
        t = on_fn()
        ds = [float(x) for x in logf.read_text().split()] if logf.exists() else []
        calls.values.append(len(ds))
        per_call.values.extend(ds)
        if not ds:
            raise StepFailed("the runner's syncfs patch was never called (the core no longer calls "
                             "rootless_groot.syscalls.syncfs?)")
        return t

    round_robin(b, b.reps.syncfs, settle=True, entries={"syncfs.on": (on, on_clean),
                                   "syncfs.off": _cold_rg(b, "debian", argv0=runner, env=env_off)})


def peak_rss(argv: list[str], env: dict, timeout=900) -> tuple[float, dict]:
    p = run([DEBIAN_PY, "-c", PEAK_RSS_WRAPPER, *argv], env=env, timeout=timeout)
    doc = json.loads(p.stdout.decode().strip().splitlines()[-1])
    if doc["exit"] != 0:
        raise StepFailed(f"{argv[0]} exited {doc['exit']} under the memory wrapper")
    return max(doc["polled_kib"], doc["rusage_children_kib"]) / 1024, doc


def rg_cold_create_memory(b, rg, key: str, *flags: str) -> float:
    """Peak RSS (MiB) of the largest process of one cold create into ``rg``'s fresh store; the
    processes' summed RSS and PSS and the top processes are recorded under ``key``."""
    try:
        mib, doc = peak_rss(rg.create_argv("debian", "mem", *flags), b.env)
        b.info.setdefault(f"{key}.top", []).append(doc["top"])
        b.sample(f"{key}_sum", "MiB").values.append(doc["sum_kib"] / 1024)
        b.sample(f"{key}_pss", "MiB").values.append(doc["pss_kib"] / 1024)
        return mib
    finally:
        rg.destroy()


def memory(b: Bench) -> None:
    """Peak RSS of any process of a cold create (and of a podman pull, for comparison)."""
    reps = b.reps.memory

    def rg():
        return rg_cold_create_memory(b, RG(b, b.fresh("store-mem")), "memory.rg")

    entries = {"memory.rg": (rg, None)}
    b.sample("memory.rg", "MiB")
    if b.podman_problem:
        b.missing("memory.podman", b.podman_problem)
    else:
        b.sample("memory.podman", "MiB")

        def pm():
            p = peers.Podman(b.fresh("podman-mem"), b.home).prepare()
            try:
                mib, doc = peak_rss(p.argv("pull", "--quiet", "--tls-verify=false", b.registry.ref("debian")), p.env)
                b.info["memory.podman.top"] = doc["top"]
                return mib
            finally:
                p.reset()

        entries["memory.podman"] = (pm, None)
    round_robin(b, reps, entries)


def _warm_store(b: Bench, name: str) -> RG:
    rg = RG(b, b.fresh(name))
    rg.create("debian", "seed", "--without-mount")
    run(rg.argv("delete", "seed"), env=b.env)
    return rg


def _create_then_delete(b: Bench, rg: RG, counter, delete_key: str, prefix: str, *flags: str):
    """A timed warm create of a new id; its delete's time goes to ``delete_key``."""
    def fn():
        image_id = f"{prefix}{next(counter)}"
        t = rg.create("debian", image_id, *flags)
        b.sample(delete_key).values.append(rg.time("delete", image_id))
        return t
    return fn


def warm(b: Bench) -> None:
    """Warm create/delete/stats/list vs python3 -c pass and podman create/rm."""
    rg = _warm_store(b, "store-warm")
    venv_py = str(Path(b.cli).parent / "python")
    try:
        rg.create("debian", "keep", "--without-mount")
        n = iter(range(10**6))

        def create_delete(prefix: str, *flags: str):
            return _create_then_delete(b, rg, n, f"warm.delete_{prefix}", prefix, *flags)

        entries = {
            "startup.python3": (lambda: timed([DEBIAN_PY, "-c", "pass"], env=b.env), None),
            "startup.venv_python": (lambda: timed([venv_py, "-c", "pass"], env=b.env), None),
            "warm.create_nomount": (create_delete("nomount", "--without-mount"), None),
            "warm.create_mount": (create_delete("mount"), None),
            "warm.create_pull_missing": (create_delete("missing", "--without-mount", "--pull", "missing"), None),
            "warm.stats": (lambda: rg.time("stats", "keep"), None),
            "warm.list": (lambda: rg.time("list"), None),
        }
        pm = None
        if b.podman_problem:
            b.missing("warm.podman_create", b.podman_problem)
        else:
            pm = peers.Podman(b.fresh("podman-warm"), b.home).prepare()
            ref = b.registry.ref("debian")
            pm.pull(ref)
            pm.run("create", "--pull", "never", "--name", "seed", ref, "true")  # first create sets up state
            pm.run("rm", "seed")

            def pcreate():
                name = f"c{next(n)}"
                t = pm.time("create", "--pull", "never", "--name", name, ref, "true")
                b.sample("warm.podman_rm").values.append(pm.time("rm", name))
                return t

            entries["warm.podman_create"] = (pcreate, None)
        try:
            round_robin(b, b.reps.warm, entries)
            for key, flags in (("warm.requests", ()), ("warm.requests_pull_missing", ("--pull", "missing"))):
                off = b.registry.log_offset()
                rg.create("debian", f"req{next(n)}", "--without-mount", *flags)
                reqs = b.registry.requests_since(off)
                b.sample(key, unit="n").values.append(len(reqs))
                b.info[key] = reqs
        finally:
            if pm:
                pm.reset()
    finally:
        rg.destroy()


def parallel(b: Bench) -> None:
    """N warm creates one after the other vs all at once (mounted, the default mode)."""
    n = b.reps.parallel_n
    rg = _warm_store(b, "store-par")
    b.info["parallel.n"] = n

    def delete_all(prefix: str):
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda i: run(rg.argv("delete", f"{prefix}{i}"), env=b.env, timeout=300), range(n)))

    def serial():
        t = time.perf_counter()
        for i in range(n):
            run(rg.create_argv("debian", f"s{i}"), env=b.env, timeout=300)
        return time.perf_counter() - t

    def concurrent():
        t = time.perf_counter()
        procs = [subprocess.Popen(rg.create_argv("debian", f"p{i}"), env=b.env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(n)]
        errors = []
        for p in procs:
            try:
                _, err = p.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                p.kill()
                err = b"timeout"
            if p.returncode:
                errors.append(err.decode(errors="replace").strip()[-200:])
        dt = time.perf_counter() - t
        if errors:
            raise StepFailed(f"{len(errors)}/{n} concurrent creates failed: {errors[0]}")
        return dt

    try:
        round_robin(b, b.reps.parallel_reps, {
            "parallel.serial": (serial, lambda: delete_all("s")),
            "parallel.concurrent": (concurrent, lambda: delete_all("p")),
        })
    finally:
        rg.destroy()


def scale(b: Bench) -> None:
    """list / stats / clean / create(+delete) with 10 vs N images in the store."""
    rg = _warm_store(b, "store-scale")
    have = 0

    def fill(upto: int):
        nonlocal have
        ids = range(have, upto)
        with ThreadPoolExecutor(3) as ex:
            list(ex.map(lambda i: run(rg.create_argv("debian", f"fill{i}", "--without-mount"), env=b.env,
                                      timeout=300), ids))
        have = upto

    try:
        for count in (10, b.reps.scale_big):
            log(f"    filling the store to {count} images")
            t0 = time.perf_counter()
            fill(count)
            log(f"    ({time.perf_counter() - t0:.1f} s)")
            k = iter(range(10**6))

            def create():
                image_id = f"x{next(k)}"
                t = rg.create("debian", image_id)
                run(rg.argv("delete", image_id), env=b.env)
                return t

            round_robin(b, b.reps.scale_reps, {
                f"scale.{count}.list": (lambda: rg.time("list"), None),
                f"scale.{count}.stats": (lambda: rg.time("stats", "fill0"), None),
                f"scale.{count}.clean": (lambda: rg.time("clean"), None),
                f"scale.{count}.create": (create, None),
            })
        b.info["scale.big"] = b.reps.scale_big
    finally:
        rg.destroy()


def layers(b: Bench) -> None:
    """Cold create of a 128-layer image vs a 2-layer image of the same content."""
    entries = {"layers.2": _cold_rg(b, "layers2"), "layers.128": _cold_rg(b, "layers128")}
    if not b.podman_problem and not b.reps.quick:
        entries["layers.podman2"] = _podman_pull(b, "layers2")
        entries["layers.podman128"] = _podman_pull(b, "layers128")
    round_robin(b, b.reps.layers, entries, settle=True)


def smallfiles(b: Bench) -> None:
    """Cold create of one layer of 100,000 small files vs podman pull vs tar -xzf."""
    img = b.images["smallfiles"]
    entries = {"smallfiles.rg": _cold_rg(b, "smallfiles")}
    if b.podman_problem:
        b.missing("smallfiles.podman", b.podman_problem)
    elif not b.reps.quick:
        entries["smallfiles.podman"] = _podman_pull(b, "smallfiles")
    if not b.reps.quick:
        entries["smallfiles.tar_xzf"] = (
            lambda: peers.tar_extract_parallel(img.blob_paths, b.fresh("floor"), b.env, "gzip"), None)
    round_robin(b, b.reps.smallfiles, entries, settle=True)


def grootfs(b: Bench) -> None:
    """GrootFS (Go) vs rootless-groot, both rootless, both stores on one loop-mounted XFS."""
    setup = gfs.load_setup(b.work)
    if "missing" in setup:
        b.missing("grootfs.cold.gfs", setup["missing"])
        return
    b.info["grootfs.version"] = setup["version"]
    xfs, host, ref = Path(setup["rg"]), b.registry.host, b.registry.ref("debian")
    cold_stores = iter(setup["stores"]["cold"])

    def gfs_cold():
        g = gfs.GrootFS(setup, next(cold_stores), b.env)
        return timed(g.create_argv(host, ref, "cold"), env=b.env, timeout=900)

    entries = {"grootfs.cold.rg": _cold_rg(b, "debian", ("--without-mount",), where=xfs),
               "grootfs.cold.gfs": (gfs_cold, None)}
    if peers.isal_available():
        entries["grootfs.floor.isal_tar"] = (
            lambda: peers.tar_extract_parallel(b.images["debian"].blob_paths, b.fresh_in(xfs, "floor"), b.env,
                                               "isal"), None)
    round_robin(b, b.reps.cold, entries, settle=True)

    mem_stores = iter(setup["stores"]["memory"])

    def rg_mem():
        return rg_cold_create_memory(b, RG(b, b.fresh_in(xfs, "store-mem")), "grootfs.memory.rg",
                                     "--without-mount")

    def gfs_mem():
        g = gfs.GrootFS(setup, next(mem_stores), b.env)
        mib, doc = peak_rss(g.create_argv(host, ref, "mem"), b.env)
        b.info.setdefault("grootfs.memory.gfs.top", []).append(doc["top"])
        b.sample("grootfs.memory.gfs_sum", "MiB").values.append(doc["sum_kib"] / 1024)
        b.sample("grootfs.memory.gfs_pss", "MiB").values.append(doc["pss_kib"] / 1024)
        return mib

    b.sample("grootfs.memory.rg", "MiB")
    b.sample("grootfs.memory.gfs", "MiB")
    round_robin(b, b.reps.memory, {"grootfs.memory.rg": (rg_mem, None), "grootfs.memory.gfs": (gfs_mem, None)})

    rg = RG(b, b.fresh_in(xfs, "store-warm"))
    g = gfs.GrootFS(setup, setup["stores"]["warm"][0], b.env)
    try:
        for image_id in ("seed", "keep"):
            rg.create("debian", image_id, "--without-mount")
            run(g.create_argv(host, ref, image_id), env=b.env, timeout=900)
        n = iter(range(10**6))

        def rg_create_delete(prefix: str, *flags: str):
            return _create_then_delete(b, rg, n, f"grootfs.rg.delete_{prefix}", prefix, *flags)

        def gfs_create_delete():
            image_id = f"g{next(n)}"
            t = timed(g.create_argv(host, ref, image_id), env=b.env)
            b.sample("grootfs.gfs.delete").values.append(timed(g.argv("delete", image_id), env=b.env))
            return t

        round_robin(b, b.reps.warm, {
            "grootfs.python3_IS": (lambda: timed([DEBIAN_PY, "-I", "-S", "-c", "pass"], env=b.env), None),
            "grootfs.python3": (lambda: timed([DEBIAN_PY, "-c", "pass"], env=b.env), None),
            "grootfs.rg.create_nomount": (rg_create_delete("nomount", "--without-mount"), None),
            "grootfs.gfs.create": (gfs_create_delete, None),
            "grootfs.rg.create_mount": (rg_create_delete("mount"), None),
            "grootfs.rg.stats": (lambda: rg.time("stats", "keep"), None),
            "grootfs.gfs.stats": (lambda: timed(g.argv("stats", "keep"), env=b.env), None),
            "grootfs.rg.list": (lambda: rg.time("list"), None),
            "grootfs.gfs.list": (lambda: timed(g.argv("list"), env=b.env), None),
        })
    finally:
        rg.destroy()  # GrootFS's stores go with the XFS file (root removes it)


def profile(b: Bench) -> None:
    """Where a warm command's time goes: phases timed from inside (bench/profile.py)."""
    from .profile import Profiler

    rg = RG(b, b.fresh("store-profile"))
    try:
        for image_id in ("seed", "keep"):  # the first one pulls the layers
            rg.create("debian", image_id, "--without-mount")
        out = b.fresh("profile")
        out.mkdir()
        p = Profiler(b.cli, rg.store, out, b.env)
        ids = iter(range(10**6))

        def create(name: str, *flags: str) -> None:
            image_id = f"p{next(ids)}"
            p.run(name, "create", ["create", "--insecure-registry", b.registry.host, *flags, b.ref("debian"),
                                   image_id], after=lambda: run(rg.argv("delete", image_id), env=b.env))

        def delete() -> None:
            image_id = f"d{next(ids)}"
            p.run("delete", "delete", ["delete", image_id],
                  before=lambda: rg.create("debian", image_id, "--without-mount"))

        for _ in range(b.reps.warm):
            create("create_nomount", "--without-mount")
            create("create_mount")
            p.run("stats", "stats", ["stats", "keep"])
            p.run("list", "list", ["list"])
            delete()
        b.info["profile.table"] = p.table([("create_nomount", "create"), ("create_mount", "mounted"),
                                           ("stats", "stats"), ("list", "list"), ("delete", "delete")])
    except StepFailed as e:
        b.missing("profile.runs", str(e))
    finally:
        rg.destroy()


SCENARIOS = {
    "startup": startup,
    "cold": cold,
    "memory": memory,
    "syncfs": syncfs,
    "warm": warm,
    "parallel": parallel,
    "scale": scale,
    "layers": layers,
    "smallfiles": smallfiles,
    "grootfs": grootfs,
    "profile": profile,
}
