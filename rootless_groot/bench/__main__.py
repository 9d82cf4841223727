"""``python -m rootless_groot.bench``: rootless-groot against podman, skopeo+umoci and the floors.

Started as root (``make bench``): builds/loads the cached images (debootstrap needs root),
makes a run directory under /var/tmp/rootless-groot-bench, and re-runs itself as the
unprivileged user (``--user``, default rgtest) for every measurement; afterwards it removes
the run directory and keeps the table and the raw samples in
/var/tmp/rootless-groot-bench/last.{txt,json}. Started as another user, it measures as that
user with the images already in the cache.

Not a test: it never fails on timing. A missing peer or a failed step is reported in the table.
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import grootfs
from . import images as images_mod
from .peers import podman_check
from .registry import Registry
from .report import render
from .scenarios import SCENARIOS, Bench, Reps
from .util import USER_PATH, dump_json, log

BASE = images_mod.CACHE.parent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rootless_groot.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one or few repetitions, smaller counts (~2-3 min)")
    p.add_argument("--only", default="", help=f"comma-separated scenarios: {','.join(SCENARIOS)}")
    p.add_argument("--user", default=os.environ.get("RG_TEST_USER", "rgtest"),
                   help="unprivileged user to measure as when started as root (default rgtest)")
    p.add_argument("--cli", default=None, help="rootless-groot entry point to measure "
                   "(default: the one next to this python)")
    p.add_argument("--grootfs", default=None, help="GrootFS binary to compare with, a setuid tardis next to it "
                   f"(default $RG_BENCH_GROOTFS or {grootfs.DEFAULT_BIN}; skipped when absent)")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)  # the user phase's run dir
    return p


def _scenarios(only: str) -> list[str]:
    names = [s.strip() for s in only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return names


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def root_phase(args) -> int:
    try:
        user = pwd.getpwnam(args.user)
    except KeyError:
        raise SystemExit(f"no user {args.user!r}: run `make deps` (creates the test user) first")
    t0 = time.monotonic()
    names = list(images_mod.BUILDERS)
    if not shutil.which("debootstrap"):
        log("debootstrap missing: the debian image can only come from the cache "
            "(INSTALL_BENCH_DEPS=1 bash scripts/install-deps.sh)")
        names.remove("debian") if images_mod.load("debian") is None else None
    try:
        images_mod.ensure(names, log=log)
    except Exception as e:  # noqa: BLE001
        log(f"building the images failed: {e}")
        return 1
    log(f"images ready in {images_mod.CACHE} ({time.monotonic() - t0:.0f} s)")
    BASE.mkdir(parents=True, exist_ok=True)
    os.chmod(BASE, 0o755)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=BASE))
    os.chmod(work, 0o755)
    os.chown(work, user.pw_uid, user.pw_gid)
    argv = [sys.executable, "-m", "rootless_groot.bench", "--work", str(work)]
    if args.quick:
        argv.append("--quick")
    if args.only:
        argv += ["--only", args.only]
    if args.cli:
        argv += ["--cli", args.cli]
    env = ["HOME=" + str(work / "home"), "PATH=" + USER_PATH, "LANG=C.UTF-8"]
    pkg_parent = str(Path(__file__).resolve().parents[2])
    if "site-packages" not in pkg_parent:
        env.append("PYTHONPATH=" + pkg_parent)  # a bench run from a checkout (the CLI still runs clean)
    log(f"measuring as {args.user} ({user.pw_uid}) in {work}")
    try:
        if "grootfs" in _scenarios(args.only):
            reps = Reps.quick_run() if args.quick else Reps()
            grootfs.root_setup(work, user, args.grootfs,
                               {"cold": reps.cold + 2, "memory": reps.memory + 1, "warm": 1})
        rc = subprocess.call(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                              "--reset-env", "env", *env, *argv], stdin=subprocess.DEVNULL)
        for name in ("report.txt", "results.json"):
            if (work / name).exists():
                dest = BASE / ("last.txt" if name.endswith("txt") else "last.json")
                shutil.copy(work / name, dest)
                os.chmod(dest, 0o644)
        return rc
    finally:
        grootfs.root_teardown(work)
        if not args.keep:
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


def user_phase(args) -> int:
    names = _scenarios(args.only)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rootless-groot-bench-", dir="/var/tmp"))
    (work / "home" / "tmp").mkdir(parents=True, exist_ok=True)
    cli = args.cli or str(Path(sys.executable).parent / "rootless-groot")
    if not os.access(cli, os.X_OK):
        raise SystemExit(f"no rootless-groot entry point at {cli} (make test-venv, or --cli PATH)")
    imgs = {n: i for n in images_mod.BUILDERS if (i := images_mod.load(n)) is not None}
    b = Bench(work=work, cli=cli, images=imgs, reps=Reps.quick_run() if args.quick else Reps())
    started = time.monotonic()
    reg = Registry(work / "registry")
    try:
        reg.start()
        b.registry = reg
        t = time.monotonic()
        for name, img in imgs.items():
            reg.push(img.path, name, b.env)
        log(f"registry on {reg.host}, {len(imgs)} images pushed ({time.monotonic() - t:.0f} s)")
        b.podman_problem = podman_check(work, b.home)
        if b.podman_problem:
            log(f"podman cannot run here: {b.podman_problem}")
        needs = {"grootfs": "debian", "profile": "debian", "cold": "debian", "memory": "debian", "syncfs": "debian", "warm": "debian", "parallel": "debian",
                 "scale": "debian", "layers": "layers128", "smallfiles": "smallfiles"}
        for name in names:
            if needs.get(name) and needs[name] not in imgs:
                b.notes[name] = f"image {needs[name]!r} not in the cache (run make bench as root once)"
                continue
            t = time.monotonic()
            # What earlier scenarios wrote is written back first: a cold create's syncfs would
            # otherwise flush another scenario's data (100,000 files after smallfiles) on its clock.
            os.sync()
            log(f"== {name}: {SCENARIOS[name].__doc__.splitlines()[0]} (sync took {time.monotonic() - t:.1f} s)")
            t = time.monotonic()
            try:
                SCENARIOS[name](b)
            except Exception as e:  # noqa: BLE001 - one broken scenario must not hide the others
                b.notes[name] = f"scenario failed: {e}"[:400]
                log(f"   failed: {e}")
            log(f"   ({time.monotonic() - t:.0f} s)")
    except Exception as e:  # noqa: BLE001
        b.notes["setup"] = str(e)
    finally:
        reg.stop()
    header = _header(b, time.monotonic() - started)
    text = header + "\n" + render(b)
    print(text, flush=True)
    (work / "report.txt").write_text(text + "\n")
    dump_json(work / "results.json", {"results": b.results, "notes": b.notes, "info": b.info, "header": header})
    return 0


def _header(b: Bench, seconds: float) -> str:
    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "missing"
    uname = os.uname()
    return (f"# rootless-groot bench ({'quick' if b.reps.quick else 'full'} run, {seconds / 60:.1f} min)\n"
            f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, kernel {uname.release}, "
            f"user {pwd.getpwuid(os.getuid()).pw_name}, run dir {b.work} ({_fstype(b.work)})\n"
            f"peers: {version(['podman', '--version'])}; {version(['skopeo', '--version'])}; "
            f"{version(['umoci', '--version'])}; {b.info.get('grootfs.version', 'GrootFS not measured')}; "
            f"{version(['/usr/bin/python3', '--version'])}")


def _fstype(path: Path) -> str:
    best, fs = "", "?"
    try:
        for line in open("/proc/self/mounts"):
            parts = line.split()
            if str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, fs = parts[1], parts[2]
    except OSError:
        pass
    return fs


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    _scenarios(args.only)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if os.geteuid() == 0 and not args.work:
        return root_phase(args)
    return user_phase(args)


if __name__ == "__main__":
    sys.exit(main())
