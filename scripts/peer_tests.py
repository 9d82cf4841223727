"""Run GrootFS's own integration suite (an already-built Ginkgo test binary) against a binary.

Used by `make peer-tests` (docs/peer-tests.md); never by `make test`. This script does not
obtain or build the suite: it takes the compiled suite, the directory of its sources (the
specs read assets relative to it) and the suite's helper `namespacer`, and runs the suite
once as root and once rootless, then prints passed/failed counts per spec file.

The suite appends `root:0:1` to /etc/subuid and /etc/subgid: the lines it added are removed
afterwards. It removes stores with `rm -rf`, so keepers of stores under this run's temporary
directory are killed after each mode (and only those).
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict

KEEPER = b"rootless-groot-keeper:"
SUBID_FILES = ("/etc/subuid", "/etc/subgid")
ADDED_LINE = "root:0:1"


def _need(value: str | None, what: str) -> str:
    if not value or not os.path.exists(value):
        sys.exit(f"make peer-tests: {what} is missing; build GrootFS's suite first (docs/peer-tests.md) "
                 "and give GROOTFS_SUITE=<suite.test> GROOTFS_SUITE_DIR=<grootfs>/integration "
                 "GROOTFS_NAMESPACER=<namespacer binary>")
    return os.path.abspath(value)


def _subid_counts() -> dict[str, int]:
    counts = {}
    for path in SUBID_FILES:
        with open(path) as f:
            counts[path] = sum(1 for line in f if line.strip() == ADDED_LINE)
    return counts


def _restore_subids(before: dict[str, int]) -> None:
    """Drop the `root:0:1` lines the suite appended (keep as many as there were before)."""
    for path, keep in before.items():
        with open(path) as f:
            lines = f.readlines()
        out, seen = [], 0
        for line in lines:
            if line.strip() == ADDED_LINE:
                seen += 1
                if seen > keep:
                    continue
            out.append(line)
        if out != lines:
            with open(path, "w") as f:
                f.writelines(out)


def _kill_keepers(under: str) -> int:
    """Kill keepers whose store lies under ``under`` (the suite's temp dir); return how many."""
    prefix = KEEPER + os.path.realpath(under).encode() + b"/"
    killed = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.startswith(prefix):
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


# Why a spec cannot pass on this kind of machine, whoever runs it (from its failure message).
CANNOT_PASS = (
    ("needs Docker Hub", ("docker.io", "answered HTTP 502", "HTTP 502")),
    ("needs sudo", ('"sudo"',)),
    ("needs a Go toolchain", ('"go": executable file not found',)),
)
# Specs that look into GrootFS's private store layout.
PRIVATE_LAYOUT = ("/volumes", "meta/dependencies", "meta/volume-")


def _why(spec: dict) -> str | None:
    message = ((spec.get("Failure") or {}).get("Message") or "")
    for reason, needles in CANNOT_PASS:
        if any(n in message for n in needles):
            return reason
    if any(n in message for n in PRIVATE_LAYOUT):
        return "reads GrootFS's private layout"
    return None


def _spec_rows(report_path: str) -> list[tuple[str, str, str]]:
    """(spec file, full spec text, state) for every It in a Ginkgo JSON report."""
    with open(report_path) as f:
        suites = json.load(f)
    rows = []
    for suite in suites:
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                continue
            name = " ".join((spec.get("ContainerHierarchyTexts") or []) + [spec.get("LeafNodeText", "")])
            where = os.path.basename(spec["LeafNodeLocation"]["FileName"])
            state = spec["State"]
            if state != "passed":
                state = f"failed: {_why(spec)}" if _why(spec) else "failed"
            rows.append((where, name, state))
    return rows


def summarize(report_path: str, mode: str) -> tuple[int, int]:
    rows = _spec_rows(report_path)
    per_file: dict[str, Counter] = defaultdict(Counter)
    for where, _, state in rows:
        per_file[where]["passed" if state == "passed" else "failed"] += 1
    print(f"\n== {mode}: passed/total per spec file")
    for where in sorted(per_file):
        c = per_file[where]
        print(f"  {where:<32} {c['passed']:>3} / {c['passed'] + c['failed']}")
    passed = sum(c["passed"] for c in per_file.values())
    reasons = Counter(state[8:] for _, _, state in rows if state.startswith("failed: "))
    for reason, n in sorted(reasons.items()):
        print(f"  failed, {reason}: {n}")
    if os.environ.get("PEER_TESTS_LIST_FAILED"):
        for where, name, state in sorted(rows):
            if state != "passed":
                print(f"    FAIL {where}: {name}")
    print(f"  {'TOTAL':<32} {passed:>3} / {len(rows)}")
    return passed, len(rows)


def loop_filesystem(workdir: str, fs: str) -> str:
    """A fresh loop-mounted filesystem for the suite's stores: btrfs with quotas (our disk limits;
    this kernel may lack XFS quotas) or XFS (GrootFS's only filesystem). Returns the mount point."""
    image, mnt = os.path.join(workdir, f"{fs}.img"), os.path.join(workdir, fs)
    os.makedirs(mnt, exist_ok=True)
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", mnt], check=True)
    with open(image, "wb") as f:
        f.truncate(8 << 30)
    subprocess.run([f"mkfs.{fs}", "-q", "-f", image], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["mount", "-o", "loop,noatime", image, mnt], check=True)
    if fs == "btrfs":
        subprocess.run(["btrfs", "quota", "enable", mnt], check=True)
    os.chmod(mnt, 0o1777)
    return mnt


def run_mode(mode: str, uid: int, gid: int, opts, binary: str, workdir: str) -> tuple[int, int]:
    tmp = tempfile.mkdtemp(prefix=f"{mode}-", dir=opts.tmp_root)
    os.chmod(tmp, 0o1777)
    report = os.path.join(workdir, f"{mode}.json")
    env = dict(os.environ, TMPDIR=tmp, GROOTFS_USER=opts.user, GROOTFS_TEST_UID=str(uid),
               GROOTFS_TEST_GID=str(gid), GROOTFS_BIN_PATH=binary, GROOTFS_TARDIS_PATH=opts.tardis,
               GROOTFS_NAMESPACER_PATH=opts.namespacer)
    cmd = [opts.suite, "-ginkgo.no-color", f"-ginkgo.json-report={report}", f"-ginkgo.timeout={opts.timeout}"]
    if opts.skip:
        cmd.append(f"-ginkgo.skip={opts.skip}")
    log_path = os.path.join(workdir, f"{mode}.log")
    print(f"peer-tests: {mode} (uid {uid}), log {log_path}", flush=True)
    before = _subid_counts()
    try:
        with open(log_path, "w") as log:
            subprocess.run(cmd, cwd=opts.suite_dir, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    finally:
        _restore_subids(before)
        killed = _kill_keepers(tmp)
        if killed:
            print(f"peer-tests: killed {killed} keeper(s) left by stores the suite removed with rm -rf")
        subprocess.run(["umount", "-R", "-l", tmp], stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.exists(report):
        print(f"peer-tests: {mode}: no report written, see {log_path}")
        return 0, 0
    return summarize(report, mode)


def compare(a_path: str, b_path: str) -> None:
    """Two reports side by side (e.g. GrootFS's and ours): counts per file, and the specs whose
    outcome differs."""
    a = {(w, n): s for w, n, s in _spec_rows(a_path)}
    b = {(w, n): s for w, n, s in _spec_rows(b_path)}
    files = sorted({w for w, _ in a} | {w for w, _ in b})
    print(f"  {'spec file':<32} {'A':>7} {'B':>7}")
    for f in files:
        ca = sum(1 for (w, _), s in a.items() if w == f and s == "passed")
        cb = sum(1 for (w, _), s in b.items() if w == f and s == "passed")
        total = sum(1 for (w, _) in a if w == f)
        print(f"  {f:<32} {ca:>3}/{total:<3} {cb:>3}/{total:<3}")
    print(f"  {'TOTAL':<32} {sum(s == 'passed' for s in a.values()):>3}/{len(a):<3} "
          f"{sum(s == 'passed' for s in b.values()):>3}/{len(b):<3}")
    for key in sorted(set(a) | set(b)):
        sa, sb = a.get(key, "-"), b.get(key, "-")
        if (sa == "passed") != (sb == "passed"):
            print(f"    A {sa[:40]:<40} B {sb[:40]:<40} {key[0]}: {key[1]}")


def main() -> int:
    if sys.argv[1:2] == ["--compare"]:
        compare(sys.argv[2], sys.argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default=os.environ.get("GROOTFS_SUITE"))
    p.add_argument("--suite-dir", default=os.environ.get("GROOTFS_SUITE_DIR"))
    p.add_argument("--namespacer", default=os.environ.get("GROOTFS_NAMESPACER"))
    p.add_argument("--tardis", default=os.environ.get("GROOTFS_TARDIS") or "/bin/true",
                   help="passed to the binary as --tardis-bin (GrootFS needs its setuid tardis)")
    p.add_argument("--bin", required=True, help="the program under test (a GrootFS-compatible CLI)")
    p.add_argument("--user", default="rgtest", help="the unprivileged user of the rootless run")
    p.add_argument("--workdir", required=True, help="reports, logs and the suite's TMPDIR go here")
    p.add_argument("--modes", default="root,rootless")
    p.add_argument("--skip", default=os.environ.get("GROOTFS_SKIP", ""), help="Ginkgo skip regexp")
    p.add_argument("--timeout", default="50m")
    p.add_argument("--fs", choices=("btrfs", "xfs", "none"), default="btrfs",
                   help="a fresh loop filesystem for the stores (none: in --workdir as it is)")
    p.add_argument("--check", action="store_true", help="only check that the suite is given")
    opts = p.parse_args()
    opts.suite = _need(opts.suite, "GROOTFS_SUITE (the compiled suite, `go test -c ./integration`)")
    opts.suite_dir = _need(opts.suite_dir, "GROOTFS_SUITE_DIR (GrootFS's integration/ directory)")
    opts.namespacer = _need(opts.namespacer, "GROOTFS_NAMESPACER (GrootFS's integration/namespacer, built)")
    if opts.check:
        return 0
    if os.geteuid() != 0:
        sys.exit("make peer-tests must run as root (the suite runs a root and a rootless pass)")
    os.makedirs(opts.workdir, exist_ok=True)
    os.chmod(opts.workdir, 0o755)
    user = pwd.getpwnam(opts.user)
    opts.tmp_root = opts.workdir if opts.fs == "none" else loop_filesystem(opts.workdir, opts.fs)
    totals = {}
    try:
        for mode in opts.modes.split(","):
            uid, gid = (0, 0) if mode == "root" else (user.pw_uid, user.pw_gid)
            totals[mode] = run_mode(mode, uid, gid, opts, os.path.abspath(opts.bin), opts.workdir)
    finally:
        if opts.fs != "none":
            _kill_keepers(opts.tmp_root)
            subprocess.run(["umount", "-R", "-l", opts.tmp_root], stderr=subprocess.DEVNULL, check=False)
            os.unlink(os.path.join(opts.workdir, f"{opts.fs}.img"))
    print("\n" + "  ".join(f"{m}: {p}/{t} passed" for m, (p, t) in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
