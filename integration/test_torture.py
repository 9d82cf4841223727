"""Issue 9's torture test: kill -9 at random points of create (cold and warm), delete, clean and
init-store, and the keeper killed mid-create; after each kill the invariants hold:

- the next command succeeds (the store is usable),
- every listed image is real: its rootfs is mounted and byte-identical to a reference,
- no ghost: nothing listed that ``stats`` cannot answer or whose rootfs is empty,
- ``tmp/`` is empty after ``clean``.

The seed is fixed (``RG_TORTURE_SEED``, default 9) and the kill delays are drawn from it,
spread over each operation's measured duration. ``make test`` runs ``RG_TORTURE_ITERATIONS``
(default 24) iterations; ``make torture`` runs 300. ``RG_TORTURE_REPORT=FILE`` writes the
counts as JSON.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time

import oci_builder as ob
from conftest import popen_cli

ITERATIONS = int(os.environ.get("RG_TORTURE_ITERATIONS", "24"))
SEED = int(os.environ.get("RG_TORTURE_SEED", "9"))
IDS = ("t0", "t1", "t2")
OPS = ("create-cold", "create-warm", "delete", "clean", "init-store", "keeper-mid-create")

# Run inside the store's namespace: one line per entry (path, type, mode, owner, size, content
# hash or link target), hashed; an empty or missing rootfs gives a different digest.
TREE_DIGEST = r"""
import hashlib, os, stat, sys
root = sys.argv[1]
lines = []
for top, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(dirs + files):
        p = os.path.join(top, name)
        st = os.lstat(p)
        extra = ""
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                extra = hashlib.sha256(f.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(p)
        lines.append(f"{os.path.relpath(p, root)} {st.st_mode:o} {st.st_uid}:{st.st_gid} {st.st_size} {extra}")
print(hashlib.sha256("\n".join(lines).encode()).hexdigest(), len(lines))
"""


def torture_image() -> ob.Image:
    files = ob.Layer([ob.File(f"srv/{i // 200}/f{i}", os.urandom(64 + i % 512), uid=i % 3, gid=i % 5)
                      for i in range(1200)], compression="gzip")
    top = ob.Layer([ob.Whiteout("srv/0/f1"), ob.Symlink("srv/link", "/srv/1/f201"), ob.File("etc/motd", b"tortured\n"),
                    ob.Dir("data", mode=0o1777)], compression="zstd")
    return ob.busybox_image([files, top])


class Torture:
    def __init__(self, cli, store, uri, user, home):
        self.cli, self.store, self.uri, self.user, self.home = cli, store, uri, user, home
        self.counts = {"iterations": 0, "killed": 0, "finished_before_kill": 0, "ghost_images": 0,
                       "wrong_rootfs": 0, "unusable_store": 0, "tmp_not_empty_after_clean": 0}
        self.problems: list[str] = []
        self.reference: str | None = None
        self.durations: dict[str, float] = {}
        self.by_op: dict[str, dict[str, int]] = {}

    def run(self, *args, check=True):
        return self.cli("--store", self.store, *args, check=check, timeout=300)

    def digest(self, image_id) -> str:
        rootfs = os.path.join(self.store, "images", image_id, "rootfs")
        r = self.run("enter", "--", self.cli.python, "-c", TREE_DIGEST, rootfs, check=False)
        return r.stdout.strip() if r.returncode == 0 else f"error: {r.stdout.strip()} {r.stderr.strip()[-300:]}"

    def problem(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        self.problems.append(f"[{self.counts['iterations']}] {kind}: {text}")

    def listed(self) -> list[str]:
        out = self.run("list").stdout
        return [] if out == "Store empty\n" else [os.path.basename(line) for line in out.split()]

    def kill_at(self, args, delay: float, target: str = "command") -> bool:
        """Start ``rootless-groot ARGS``, SIGKILL it (or the keeper) after ``delay`` seconds;
        True if it was still running when killed."""
        proc = popen_cli(self.user, self.home, "--store", self.store, *args)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        alive = proc.poll() is None
        if target == "keeper":
            try:
                with open(os.path.join(self.store, "run", "keeper.pid")) as f:
                    os.kill(int(f.read().split()[0]), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0 and len(out.splitlines()) != 1:
                self.problem("unusable_store", f"create with its keeper killed: not one line: {out!r} {err[-300:]!r}")
            return alive
        if alive:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)
        return alive

    # ---- the invariants -----------------------------------------------------------------
    def check_image(self, image_id: str) -> None:
        """A listed image must answer stats and have the reference rootfs."""
        r = self.run("stats", image_id, check=False)
        if r.returncode != 0:
            self.problem("ghost_images", f"{image_id} listed, stats says {r.stdout.strip()!r}")
            return
        got = self.digest(image_id)
        if got != self.reference:
            self.problem("wrong_rootfs", f"{image_id}: {got} != {self.reference}")

    def check_store(self) -> None:
        for image_id in self.listed():
            self.check_image(image_id)
        entries = json.loads(self.run("list", "--json").stdout)["images"]
        for entry in entries:
            if not entry["mounted"] or entry.get("error"):
                self.problem("ghost_images", f"list --json: {entry}")

    def ensure(self, image_id: str) -> None:
        """The next command succeeds: create the id (or find it real and right)."""
        r = self.run("create", self.uri, image_id, check=False)
        if r.returncode != 0:
            if "already exists" in r.stdout and image_id in self.listed():
                self.check_image(image_id)
                return
            self.problem("unusable_store", f"create {image_id}: {r.stdout.strip()!r} {r.stderr.strip()[-300:]!r}")
            return
        self.check_image(image_id)

    def clean_and_check_tmp(self) -> None:
        r = self.run("clean", check=False)
        if r.returncode != 0:
            self.problem("unusable_store", f"clean: {r.stdout.strip()!r}")
        tmp = os.path.join(self.store, "tmp")
        left = os.listdir(tmp) if os.path.isdir(tmp) else []
        if left:
            self.problem("tmp_not_empty_after_clean", f"{left}")

    # ---- one iteration ------------------------------------------------------------------
    def iteration(self, rng: random.Random) -> None:
        self.counts["iterations"] += 1
        op = OPS[(self.counts["iterations"] - 1) % len(OPS)] if rng.random() < 0.5 else rng.choice(OPS)
        image_id = rng.choice(IDS)
        # half the kills anywhere, half near the end, where each command makes things real
        d = self.durations[op]
        delay = rng.uniform(0.0, 1.15 * d) if rng.random() < 0.5 else rng.uniform(0.6 * d, 1.05 * d)
        if op in ("create-cold", "keeper-mid-create", "clean"):
            for i in self.listed():
                self.run("delete", i)
            if op != "clean":
                self.run("clean")  # (for a clean: its layers and the deleted images are its work)
        elif op == "create-warm" or op == "delete":
            if op == "create-warm":
                self.run("delete", image_id, check=False)
            else:
                self.ensure(image_id)
        if op == "delete":
            killed = self.kill_at(["delete", image_id], delay)
        elif op == "clean":
            killed = self.kill_at(["clean"], delay)
        elif op == "init-store":
            self.run("delete-store")
            killed = self.kill_at(["init-store"], delay)
        else:
            killed = self.kill_at(["create", self.uri, image_id], delay,
                                  target="keeper" if op == "keeper-mid-create" else "command")
        self.counts["killed" if killed else "finished_before_kill"] += 1
        self.by_op.setdefault(op, {"killed": 0, "finished_before_kill": 0})[
            "killed" if killed else "finished_before_kill"] += 1
        if op == "init-store":  # the next command: init-store again (create would do it too)
            r = self.run("init-store", check=False)
            if r.returncode != 0:
                self.problem("unusable_store", f"init-store after a killed one: {r.stdout.strip()!r}")
                return
        # the invariants, right after the kill (before anything repairs it)
        self.check_store()
        if op == "delete":
            r = self.run("delete", image_id, check=False)
            if r.returncode != 0 or image_id in self.listed() or os.path.lexists(
                    os.path.join(self.store, "images", image_id)):
                self.problem("unusable_store", f"delete {image_id} after a killed delete: {r.stdout.strip()!r}")
        else:
            self.ensure(image_id)
        if self.counts["iterations"] % 4 == 0 or op == "clean":
            self.clean_and_check_tmp()

    def calibrate(self) -> None:
        """How long each operation takes here, so the kills land all along it."""
        def timed(fn) -> float:
            start = time.monotonic()
            fn()
            return time.monotonic() - start
        self.run("init-store")
        cold = timed(lambda: self.run("create", self.uri, "t0"))
        self.reference = self.digest("t0")
        warm = timed(lambda: self.run("create", self.uri, "t1"))
        delete = timed(lambda: self.run("delete", "t1"))
        self.run("delete", "t0")
        clean = timed(lambda: self.run("clean"))
        self.run("delete-store")
        init = timed(lambda: self.run("init-store"))
        self.durations = {"create-cold": cold, "keeper-mid-create": cold, "create-warm": warm,
                          "delete": delete, "clean": max(clean, 0.05), "init-store": init}


def test_kill_9_anywhere_leaves_no_ghost_no_wrong_rootfs_no_unusable_store(cli, store_dir, user_tmp, test_user):
    lay = ob.write_layout(user_tmp / "torture", [torture_image()], tag="t")
    t = Torture(cli, store_dir, lay.uri("t"), test_user, user_tmp)
    t.calibrate()
    assert t.reference and not t.reference.startswith("error"), t.reference
    rng = random.Random(SEED)
    for _ in range(ITERATIONS):
        t.iteration(rng)
    t.clean_and_check_tmp()
    report = {"seed": SEED, **t.counts, "by_operation": t.by_op, "durations": {k: round(v, 3) for k, v in t.durations.items()},
              "problems": t.problems[:50]}
    if os.environ.get("RG_TORTURE_REPORT"):
        with open(os.environ["RG_TORTURE_REPORT"], "w") as f:
            json.dump(report, f, indent=1)
    assert not t.problems, json.dumps(report, indent=1)
    assert t.counts["killed"] > 0
