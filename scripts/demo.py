"""The demo behind `make run`: every step a user takes, printed with its real output."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import oci_builder as ob
from runc import RUNC, make_config

work = sys.argv[1]
store = os.path.join(work, "store")
rg = [sys.executable, "-m", "rootless_groot", "--store", store]


def step(*args: str, show: bool = True) -> str:
    print(f"$ rootless-groot --store {store} {' '.join(shlex.quote(a) for a in args)}", flush=True)
    r = subprocess.run([*rg, *args], capture_output=True, text=True)
    if show and r.stdout:
        print(r.stdout, end="", flush=True)
    if r.stderr:
        print(r.stderr, end="", file=sys.stderr, flush=True)
    if r.returncode != 0:
        sys.exit(f"demo: `{args[0]}` failed with status {r.returncode}")
    return r.stdout


print(f"# uid {os.getuid()}, no root: building a busybox image (OCI layout) in {work}/image")
app = ob.Layer([ob.File("srv/hello.txt", b"hello from a rootless rootfs\n", uid=33, gid=33)], compression="zstd")
layout = ob.write_layout(os.path.join(work, "image"), [ob.busybox_image([app], env=["PATH=/bin", "GREETING=hi"])],
                         tag="demo")
step("init-store")
spec = json.loads(step("create", layout.uri("demo"), "demo1"))
rootfs = spec["root"]["path"]

bundle = os.path.join(work, "bundle")
os.makedirs(bundle)
config = make_config(rootfs, ["/bin/sh", "-c", "cat /srv/hello.txt; id; ls -ln /srv; echo GREETING=$GREETING"],
                     env=spec["process"]["env"])
with open(os.path.join(bundle, "config.json"), "w") as f:
    json.dump(config, f)
print("# run it with rootless runc, inside the store's user namespace:")
step("enter", "--", RUNC, "--root", os.path.join(work, "runc-state"), "run", "--bundle", bundle, "demo-ctr")
step("stats", "demo1")
step("list")
step("delete", "demo1")
step("clean")
step("delete-store")
print("# done: nothing left behind")
