"""The quota acceptance scenario, run as root inside uml-run (XFS) or a private mount
namespace (btrfs on a loop device). Prints one JSON document of observations on its last
line; the pytest side (test_quota_*.py) asserts on it.

Inside, nothing is installed on the host: the helper's config, state and install dirs are
tmpfs mounts, the launcher comes from ``make helper`` and the package from the checkout.

    python3 quota_scenario.py --fs xfs --mnt /mnt/uml-vol --repo REPO --launcher BIN \
        --python PY --layout URI --uid U --gid G --subuid S --subgid S [--abuse]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

HELPER_DIR = "/usr/local/libexec/rootless-groot"
HELPER = f"{HELPER_DIR}/rootless-groot-quota"
MIB = 1 << 20
USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sh(*cmd, check=True, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if check and r.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({r.returncode}): {r.stdout} {r.stderr}")
    return r


def install_helper(repo: str, launcher: str) -> None:
    for d, mode in ((HELPER_DIR, "0755"), ("/etc/rootless-groot", "0755"), ("/var/lib/rootless-groot-helper", "0700")):
        os.makedirs(d, exist_ok=True)
        sh("mount", "-t", "tmpfs", "-o", f"mode={mode},size=16m", "tmpfs", d)
    os.mkdir(f"{HELPER_DIR}/privileged_helper", 0o755)
    src = os.path.join(repo, "privileged_helper")
    for name in os.listdir(src):
        if name.endswith(".py"):
            shutil.copyfile(os.path.join(src, name), f"{HELPER_DIR}/privileged_helper/{name}")
            os.chmod(f"{HELPER_DIR}/privileged_helper/{name}", 0o644)
    shutil.copyfile(launcher, HELPER)
    os.chmod(HELPER, 0o4755)


class User:
    def __init__(self, a):
        self.uid, self.gid, self.py = a.uid, a.gid, a.python
        self.home = f"/tmp/rg-quota-home-{a.uid}"
        os.makedirs(self.home, exist_ok=True)
        os.chown(self.home, a.uid, a.gid)

    def run(self, *cmd, input=None, timeout=300):
        env = [f"HOME={self.home}", f"PATH={USER_PATH}", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"]
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--reset-env",
                "env", "-i", *env, *map(str, cmd)]
        r = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, cwd="/")
        return {"rc": r.returncode, "out": r.stdout.strip(), "err": r.stderr.strip()[-2000:]}

    def cli(self, store, *args, **kw):
        return self.run(self.py, "-m", "rootless_groot", "--store", store, *args, **kw)

    def helper(self, request: dict | bytes, **kw):
        data = request if isinstance(request, bytes) else json.dumps(request)
        if isinstance(data, bytes):
            data = data.decode()
        r = self.run(HELPER, input=data, **kw)
        try:
            r["answer"] = json.loads(r["out"])
        except ValueError:
            r["answer"] = None
        return r


def write(user, store, image, name, mib):
    """dd inside the store's namespace (uid 0 there) into the mounted rootfs."""
    return user.cli(store, "enter", "--", "dd", "if=/dev/zero", f"of={store}/images/{image}/rootfs/{name}",
                    "bs=1M", f"count={mib}", "conv=fsync")


PROJID_PROBE = r"""
import fcntl, os, struct, sys
fmt = struct.Struct("=IIIII8s")
out = []
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(fmt.size)
    fcntl.ioctl(fd, 0x801C581F, buf, True)
    x = list(fmt.unpack(buf))
    x[3] = 4242
    try:
        fcntl.ioctl(fd, 0x401C5820, fmt.pack(*x))
        out.append("changed")
    except OSError as e:
        out.append(e.errno)
print(out)
"""


def scenario(a, res: dict) -> dict:
    user = User(a)
    store = f"{a.mnt}/store"
    size_flag = str(1 << 30)
    init = sh(a.python, "-m", "rootless_groot", "--store", store, "init-store", "--store-size-bytes", size_flag,
              "--uid-mapping", f"0:{a.uid}:1", "--uid-mapping", f"1:{a.subuid}:65536",
              "--gid-mapping", f"0:{a.gid}:1", "--gid-mapping", f"1:{a.subgid}:65536", check=False)
    res["init"] = {"rc": init.returncode, "out": init.stdout.strip(), "err": init.stderr.strip()[-2000:]}
    res["registrations"] = os.listdir("/etc/rootless-groot/stores.d") if os.path.isdir(
        "/etc/rootless-groot/stores.d") else []
    if init.returncode:
        return res
    res["too_small"] = user.cli(store, "create", "--disk-limit-size-bytes", str(2 * MIB), a.layout, "small")
    res["small_exists"] = os.path.exists(f"{store}/images/small")

    res["create"] = user.cli(store, "create", "--disk-limit-size-bytes", str(10 * MIB), a.layout, "img1")
    with open(f"{store}/images/img1/image.json") as f:
        res["image_size"] = json.load(f)["size"]
    res["w4"] = write(user, store, "img1", "a", 4)
    res["w2"] = write(user, store, "img1", "b", 2)
    res["stats"] = user.cli(store, "stats", "img1")
    res["truth"] = sh("du", "-s", "-B1", f"{store}/images/img1/diff/").stdout.split()[0]

    res["create_ex"] = user.cli(store, "create", "--disk-limit-size-bytes", str(10 * MIB),
                                "--exclude-image-from-quota", a.layout, "img2")
    res["x6"] = write(user, store, "img2", "a", 6)
    res["x5"] = write(user, store, "img2", "b", 5)
    res["stats_ex"] = user.cli(store, "stats", "img2")

    if a.fs == "xfs":
        # The container may not move itself to another project (the kernel says EINVAL).
        res["projid_change"] = user.cli(store, "enter", "--", a.python, "-c", PROJID_PROBE,
                                        f"{store}/images/img1/rootfs/a", f"{store}/images/img1/diff")
    res["delete"] = user.cli(store, "delete", "img1")
    res["create_after_delete"] = user.cli(store, "create", "--disk-limit-size-bytes", str(10 * MIB), a.layout,
                                          "img3")
    res["w_after_delete"] = write(user, store, "img3", "a", 4)
    root_run(a, user, store, res)
    with open("/var/lib/rootless-groot-helper/projids.json") if os.path.exists(
            "/var/lib/rootless-groot-helper/projids.json") else open(os.devnull) as f:
        res["state"] = f.read()
    if a.fs == "btrfs":
        btrfs_limits(a, user, store, res)
    if a.abuse and a.fs == "xfs":
        res["abuse"] = abuse(a, user, store)
        res["caps"] = per_user_caps(a, user, store)
    return res


def btrfs_limits(a, user: User, store: str, res: dict) -> None:
    """img3 holds 4 MiB: a 1-byte limit is refused, a limit below the usage is accepted and can
    be cleared (the kernel answers EDQUOT when that is done through the volume itself); after a
    delete no qgroup is left <stale>."""
    from rootless_groot.quota import store_name

    req = {"v": 1, "store": store_name(store), "image": "img3"}
    res["btrfs_one_byte"] = user.helper({**req, "op": "set", "bytes": 1})["answer"]
    res["btrfs_below_usage"] = user.helper({**req, "op": "set", "bytes": 256 << 10})["answer"]
    res["btrfs_write_over"] = write(user, store, "img3", "c", 1)
    res["btrfs_clear_over"] = user.helper({**req, "op": "clear"})["answer"]
    res["btrfs_set_again"] = user.helper({**req, "op": "set", "bytes": 10 * MIB})["answer"]
    res["btrfs_delete"] = user.cli(store, "delete", "img3")
    mnt = os.path.dirname(store)
    sh("btrfs", "subvolume", "sync", mnt, check=False)
    res["btrfs_create_after"] = user.cli(store, "create", "--disk-limit-size-bytes", str(10 * MIB), a.layout,
                                         "img4")
    res["btrfs_qgroups"] = sh("btrfs", "qgroup", "show", mnt, check=False).stdout


CAP_LOOP = r"""
import json, os, shutil, subprocess, sys
store, name, helper, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def ask(image):
    req = {"v": 1, "op": "set", "store": name, "image": image, "bytes": 1 << 20}
    r = subprocess.run([helper], input=json.dumps(req).encode(), capture_output=True, timeout=60)
    return json.loads(r.stdout)

def fresh(image):
    d = f"{store}/images/{image}"
    os.mkdir(d)
    for sub in ("diff", "workdir", "rootfs"):
        os.mkdir(f"{d}/{sub}")
    return image

answers = [ask(fresh(f"loop{i}")) for i in range(count)]
out = {"ok": sum(1 for a in answers if a.get("ok")), "last": answers[-1]}
for i in range(5):  # images deleted without clear: their IDs come back once the cap is reached
    shutil.rmtree(f"{store}/images/loop{i}")
out["after_delete"] = ask(fresh("loop-again"))
print(json.dumps(out))
"""


def per_user_caps(a, user: User, store: str) -> dict:
    """One user's set loop hits their cap; another user is still served, and the state stays small."""
    from privileged_helper.ops import register
    from rootless_groot.quota import store_name

    with open("/var/lib/rootless-groot-helper/projids.json") as f:
        mine = sum(1 for rec in json.load(f)["alloc"].values() if rec["uid"] == a.uid)
    cap = mine + 30
    with open("/etc/rootless-groot/helper.json", "w") as f:
        json.dump({"max_allocations_per_user": cap}, f)
    r = user.run(a.python, "-c", CAP_LOOP, store, store_name(store), HELPER, "60", timeout=1200)
    try:
        out = json.loads(r["out"].splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": r}
    out["cap"], out["before"] = cap, mine
    other_uid = 61003
    store2 = os.path.join(os.path.dirname(store), "other-store")
    for d in (store2, f"{store2}/images", f"{store2}/images/x", f"{store2}/images/x/diff",
              f"{store2}/images/x/workdir", f"{store2}/images/x/rootfs"):
        os.mkdir(d)
        os.chown(d, other_uid, other_uid)
    register("other-store", store2, other_uid)
    req = json.dumps({"v": 1, "op": "set", "store": "other-store", "image": "x", "bytes": 1 << 20})
    r2 = sh("setpriv", f"--reuid={other_uid}", f"--regid={other_uid}", "--clear-groups", HELPER, input=req,
            check=False, cwd="/")
    try:
        out["other_user"] = json.loads(r2.stdout)
    except ValueError:
        out["other_user"] = {"raw": r2.stdout, "err": r2.stderr}
    out["state_size"] = os.stat("/var/lib/rootless-groot-helper/projids.json").st_size
    return out


def _rc(r) -> dict:
    return {"rc": r.returncode, "out": r.stdout.strip(), "err": r.stderr.strip()[-2000:]}


def root_run(a, user: User, store: str, res: dict) -> None:
    """Garden's production mode on the same mapped store: root creates with a limit (no setuid
    helper involved), the runtime (root) mounts the overlay from the JSON, the container's root
    (the store's owner) writes; then the mapped user deletes the image."""
    cli = [a.python, "-m", "rootless_groot", "--store", store]
    r = sh(*cli, "create", "--without-mount", "--disk-limit-size-bytes", str(10 * MIB), a.layout, "rootimg",
           check=False)
    res["root_create"] = _rc(r)
    if r.returncode:
        return
    image = f"{store}/images/rootimg"
    res["root_owners"] = [os.stat(f"{image}/{d}").st_uid for d in ("", "diff", "image.json")]
    rootfs = json.loads(r.stdout)["root"]["path"]
    sh("mount", "-t", "overlay", "overlay", "-o", json.loads(r.stdout)["mounts"][0]["options"][0], rootfs)
    try:
        as_owner = ["setpriv", f"--reuid={a.uid}", f"--regid={a.gid}", "--clear-groups"]
        for name, mib in (("root_w4", 4), ("root_w2", 2)):
            res[name] = _rc(sh(*as_owner, "dd", "if=/dev/zero", f"of={rootfs}/{name}", "bs=1M", f"count={mib}",
                               "conv=fsync", check=False))
    finally:
        sh("umount", rootfs, check=False)
    res["root_stats"] = _rc(sh(*cli, "stats", "rootimg", check=False))
    res["user_deletes_root_image"] = user.cli(store, "delete", "rootimg")
    res["root_image_gone"] = not os.path.exists(image)
    garden_store(a, res)


MAXIMUS = 4294967294


def garden_store(a, res: dict) -> None:
    """garden-runc-release's exact set-up: init-store --store-size-bytes with 0:maximus:1 and
    1:1:maximus-1; root creates with a limit, the container's root (maximus) writes, root deletes."""
    store = f"{a.mnt}/garden-store"
    maps = [f"0:{MAXIMUS}:1", f"1:1:{MAXIMUS - 1}"]
    cli = [a.python, "-m", "rootless_groot", "--store", store]
    init = sh(*cli, "init-store", "--store-size-bytes", str(1 << 30), *[x for m in maps for x in ("--uid-mapping", m)],
              *[x for m in maps for x in ("--gid-mapping", m)], check=False)
    res["garden_init"] = _rc(init)
    if init.returncode:
        return
    r = sh(*cli, "create", "--disk-limit-size-bytes", str(10 * MIB), a.layout, "cell", check=False)
    res["garden_create"] = _rc(r)
    if r.returncode:
        return
    rootfs = json.loads(r.stdout)["root"]["path"]
    res["garden_owner"] = os.stat(f"{rootfs}/bin").st_uid
    as_maximus = ["setpriv", f"--reuid={MAXIMUS}", f"--regid={MAXIMUS}", "--clear-groups"]
    for name, mib in (("garden_w4", 4), ("garden_w2", 2)):
        res[name] = _rc(sh(*as_maximus, "dd", "if=/dev/zero", f"of={rootfs}/{name}", "bs=1M", f"count={mib}",
                           "conv=fsync", check=False))
    res["garden_stats"] = _rc(sh(*cli, "stats", "cell", check=False))
    res["garden_delete"] = _rc(sh(*cli, "delete", "cell", check=False))
    res["garden_clean"] = _rc(sh(*cli, "clean", check=False))
    res["garden_delete_store"] = _rc(sh(*cli, "delete-store", check=False))


ABUSER = r"""
import json, os, subprocess, sys, threading, time, random
store, name, helper = sys.argv[1:4]
images = f"{store}/images"
victim = os.path.join(os.path.dirname(store), "victim")

def ask(image, op="set", extra=None):
    req = {"v": 1, "op": op, "store": name, "image": image}
    if op == "set":
        req["bytes"] = 1 << 30
    req.update(extra or {})
    t = time.monotonic()
    r = subprocess.run([helper], input=json.dumps(req).encode(), capture_output=True, timeout=60)
    try:
        ans = json.loads(r.stdout)
    except ValueError:
        ans = {"raw": r.stdout.decode(errors="replace")}
    ans["secs"] = round(time.monotonic() - t, 3)
    return ans

def fresh(image):
    d = f"{images}/{image}"
    os.mkdir(d)
    for sub in ("diff", "workdir", "rootfs"):
        os.mkdir(f"{d}/{sub}")
    with open(f"{d}/image.json", "w") as f:
        f.write("{}")

out = {}
out["dotdot"] = ask("..")
out["slash"] = ask("a/b")
out["absolute"] = ask("/etc")
out["too_long"] = ask("x" * 300)
out["extra_key"] = ask("p0", extra={"projid": 4242})
os.symlink(victim, f"{images}/evil")
out["symlink_victim"] = ask("evil")
os.symlink("/", f"{images}/rootlink")
out["symlink_root"] = ask("rootlink")
out["other_users_dir"] = ask("other")
os.mkfifo(f"{images}/fifo")
out["fifo"] = ask("fifo")
out["hardlink"] = ask("hl")
out["missing"] = ask("missing")
out["get_other"] = ask("other", op="get")
out["clear_other"] = ask("other", op="clear")
unreg = dict(store="s" + "0" * 24)
out["unregistered"] = ask("p0", extra=unreg)
out["extra_args"] = json.loads(subprocess.run([helper, "--set", "/"], input=b"{}", capture_output=True).stdout)

# symlink swap race: images/race flips between our own fresh dir and a symlink to the victim
fresh("race-real")
stop = False
def flipper():
    while not stop:
        try:
            os.rename(f"{images}/race-real", f"{images}/race")
            os.rename(f"{images}/race", f"{images}/race-real")
            os.symlink(victim, f"{images}/race")
            os.unlink(f"{images}/race")
        except OSError:
            pass
t = threading.Thread(target=flipper)
t.start()
race = [ask("race")["ok"] for _ in range(int(sys.argv[4]))]
stop = True
t.join()
out["race_ok_count"] = sum(1 for r in race if r)
out["race_total"] = len(race)

# 100 parallel requests on 100 fresh dirs
for i in range(100):
    fresh(f"p{i}")
procs = [subprocess.Popen([helper], stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(100)]
answers = []
for i, p in enumerate(procs):
    p.stdin.write(json.dumps({"v": 1, "op": "set", "store": name, "image": f"p{i}", "bytes": 1 << 20}).encode())
    p.stdin.close()
for p in procs:
    answers.append(json.loads(p.stdout.read()))
    p.wait()
out["parallel_ok"] = sum(1 for a in answers if a.get("ok"))
out["parallel_ids"] = [a.get("projid") for a in answers]

# SIGKILL mid-request
for i in range(20):
    fresh(f"k{i}")
    p = subprocess.Popen([helper], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    p.stdin.write(json.dumps({"v": 1, "op": "set", "store": name, "image": f"k{i}", "bytes": 1 << 20}).encode())
    p.stdin.close()
    time.sleep(random.Random(i).uniform(0, 0.3))
    p.kill()
    p.wait()
out["after_kill"] = ask("p0", op="get")
print(json.dumps(out))
"""


def abuse(a, user: User, store: str) -> dict:
    """Helper requests a hostile store owner could make; the victim must stay untouched."""
    from privileged_helper import xfs
    from rootless_groot.quota import store_name

    victim = os.path.join(os.path.dirname(store), "victim")
    os.mkdir(victim)
    with open(f"{victim}/file", "w") as f:
        f.write("victim data\n")
    os.chown(victim, 61002, 61002)
    os.chown(f"{victim}/file", 61002, 61002)
    fd = os.open(victim, os.O_RDONLY | os.O_DIRECTORY)
    xfs.set_limit(fd, 4242, MIB)
    xfs.set_projid(fd, 4242)
    before = (xfs.get_fsxattr(fd)[1], xfs.get_quota(fd, 4242)["bytes"])
    images = f"{store}/images"
    os.mkdir(f"{images}/other")
    os.chown(f"{images}/other", 61002, 61002)
    hl = f"{images}/hl"
    for d in (hl, f"{hl}/diff", f"{hl}/workdir", f"{hl}/rootfs"):
        os.mkdir(d)
        os.chown(d, a.uid, a.gid)
    os.link(f"{victim}/file", f"{hl}/diff/file")
    r = user.run(a.python, "-c", ABUSER, store, store_name(store), HELPER, str(a.race), timeout=1200)
    try:
        out = json.loads(r["out"].splitlines()[-1])
    except (ValueError, IndexError):
        out = {"error": r}
    out["victim_before"] = before
    out["victim_after"] = (xfs.get_fsxattr(fd)[1], xfs.get_quota(fd, 4242)["bytes"])
    os.close(fd)
    with open("/var/lib/rootless-groot-helper/projids.json") as f:
        out["state_ids"] = sorted(int(k) for k in json.load(f)["alloc"])
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    for name in ("fs", "mnt", "repo", "launcher", "python", "layout"):
        p.add_argument(f"--{name}", required=True)
    for name in ("uid", "gid", "subuid", "subgid"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--abuse", action="store_true")
    p.add_argument("--race", type=int, default=100)
    a = p.parse_args()
    sys.path.insert(0, a.repo)
    install_helper(a.repo, a.launcher)
    res: dict = {}
    try:
        scenario(a, res)
    except BaseException:  # report what was seen so far; the test shows it
        import traceback

        res["crash"] = traceback.format_exc()[-3000:]
    finally:
        # stop the store's keeper: nothing the scenario started may outlive it
        res["delete_store"] = User(a).cli(f"{a.mnt}/store", "delete-store")
    print("\n" + json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
