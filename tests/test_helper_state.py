"""Project-ID allocation state and store registrations (root-owned files, atomic, locked)."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time
import uuid

import pytest

from privileged_helper.protocol import HelperError
from privileged_helper.state import (Registration, Roots, State, load_registration, open_trusted_dir,
                                     remove_registration, save_registration)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the helper's files must be root-owned: run as root")


@pytest.fixture
def roots():
    base = f"/var/lib/rg-helper-test-{uuid.uuid4().hex[:8]}"
    os.mkdir(base, 0o755)
    r = Roots(config_dir=f"{base}/etc", state_dir=f"{base}/state", projid_min=1000, projid_max=1000 + 500)
    yield r
    shutil.rmtree(base, ignore_errors=True)


def alloc(roots, n=1, is_free=lambda p: True, store="s1"):
    with State(roots) as st:
        return [st.allocate(store, 1000, 1, 1000 + i, f"img{i}", is_free).projid for i in range(n)]


def test_allocates_unique_ids_in_range(roots):
    ids = alloc(roots, 20)
    assert len(set(ids)) == 20 and min(ids) >= 1000
    assert alloc(roots, 1)[0] not in ids
    with State(roots) as st:
        assert len(st.allocs) == 21


def test_never_zero_or_one():
    base = f"/var/lib/rg-helper-test-{uuid.uuid4().hex[:8]}"
    os.mkdir(base, 0o755)
    try:
        r = Roots(config_dir=f"{base}/etc", state_dir=f"{base}/state", projid_min=0, projid_max=10)
        assert min(alloc(r, 5)) == 2
    finally:
        shutil.rmtree(base)


def test_skips_ids_in_use_on_the_filesystem(roots):
    busy = {1000, 1001, 1003}
    assert alloc(roots, 2, is_free=lambda p: p not in busy) == [1002, 1004]


def test_exhausted(roots):
    with pytest.raises(HelperError) as e:
        alloc(roots, 1, is_free=lambda p: False)
    assert e.value.code == "exhausted"


def test_free_and_lookup(roots):
    (pid,) = alloc(roots)
    with State(roots) as st:
        a = st.find(pid)
        assert a is not None and a.matches("s1", 1000, 1, 1000)
        assert st.for_dir("s1", 1000, 1, 1000) == a
        assert st.for_dir("s1", 1001, 1, 1000) is None  # another uid never matches
        st.free(pid)
    with State(roots) as st:
        assert st.find(pid) is None


def _worker(roots, i, q):
    with State(roots) as st:
        q.put(st.allocate("s1", 1000, 1, 5000 + i, f"img{i}", lambda p: True).projid)


def test_100_parallel_requests_get_distinct_ids(roots):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(roots, i, q)) for i in range(100)]
    for p in procs:
        p.start()
    ids = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    assert len(set(ids)) == 100
    with State(roots) as st:
        assert sorted(st.allocs) == sorted(ids)


def _churn(roots):
    i = 0
    while True:
        with State(roots) as st:
            a = st.allocate("s1", 1000, 1, 9000 + i, f"img{i}", lambda p: True)
            if i % 3 == 0:
                st.free(a.projid)
        i += 1


def test_sigkill_mid_request_leaves_state_intact(roots):
    ctx = multiprocessing.get_context("fork")
    for delay in (0.05, 0.11, 0.17, 0.23, 0.29):
        p = ctx.Process(target=_churn, args=(roots,))
        p.start()
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        with State(roots) as st:  # parses, and the lock is free again
            ids = list(st.allocs)
        assert len(ids) == len(set(ids))
    with open(os.path.join(roots.state_dir, "projids.json")) as f:
        json.load(f)


def test_refuses_untrusted_state(roots):
    alloc(roots)
    path = os.path.join(roots.state_dir, "projids.json")
    os.chmod(path, 0o666)
    with pytest.raises(HelperError):
        State(roots).__enter__()
    os.chmod(path, 0o600)
    os.chown(path, 1000, 1000)
    with pytest.raises(HelperError):
        State(roots).__enter__()
    os.unlink(path)
    os.symlink("/etc/passwd", path)
    with pytest.raises(HelperError):
        State(roots).__enter__()


def test_refuses_writable_or_symlinked_dirs(roots):
    alloc(roots)
    os.chmod(roots.state_dir, 0o777)
    with pytest.raises(HelperError):
        State(roots).__enter__()
    os.chmod(roots.state_dir, 0o700)
    moved = roots.state_dir + ".real"
    os.rename(roots.state_dir, moved)
    os.symlink(moved, roots.state_dir)
    with pytest.raises(HelperError):
        State(roots).__enter__()
    with pytest.raises(HelperError):
        open_trusted_dir("/tmp")  # world-writable


def test_registrations(roots):
    reg = Registration("sabc", "/srv/store", 1000, "xfs", None)
    save_registration(roots, reg)
    assert load_registration(roots, "sabc") == reg
    assert load_registration(roots, "nope") is None
    assert load_registration(roots, "../etc/passwd") is None
    path = os.path.join(roots.stores_dir, "sabc.json")
    os.chown(path, 1000, 1000)
    with pytest.raises(HelperError):
        load_registration(roots, "sabc")
    os.chown(path, 0, 0)
    with open(path, "w") as f:
        json.dump({"v": 1, "name": "sabc", "path": "/srv/../etc", "owner_uid": 1000, "fs": "xfs"}, f)
    with pytest.raises(HelperError):
        load_registration(roots, "sabc")
    assert remove_registration(roots, "sabc")
    assert load_registration(roots, "sabc") is None
