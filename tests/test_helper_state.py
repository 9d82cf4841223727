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
from privileged_helper.state import (Allocation, Registration, Roots, State, load_config, load_registration, open_trusted_dir,
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


# -- per-user caps (helper.json) -------------------------------------------------------------------

def write_config(roots, doc):
    os.makedirs(roots.config_dir, mode=0o755, exist_ok=True)
    with open(f"{roots.config_dir}/helper.json", "w") as f:
        f.write(json.dumps(doc) if not isinstance(doc, str) else doc)


def test_default_caps_without_config(roots):
    config = load_config(roots)
    assert config.max_allocations_per_user == 1024 and config.max_bytes_per_user == 0


def test_a_user_at_the_allocation_cap_is_refused_and_others_are_not(roots):
    write_config(roots, {"max_allocations_per_user": 3})
    config = load_config(roots)
    with State(roots) as st:
        for i in range(3):
            st.check_user_caps(1000, config, 1 << 20, None)
            st.allocate("s1", 1000, 1, 5000 + i, f"img{i}", lambda p: True)
        with pytest.raises(HelperError) as e:
            st.check_user_caps(1000, config, 1 << 20, None)
        assert e.value.code == "exhausted" and "max_allocations_per_user" in e.value.detail
        st.check_user_caps(1000, config, 1 << 20, st.allocs[min(st.allocs)])  # changing an existing limit: fine
        st.check_user_caps(2000, config, 1 << 20, None)  # another user: fine
        st.allocate("s2", 2000, 1, 6000, "theirs", lambda p: True)


def test_the_sum_of_one_users_limits_is_capped(roots):
    write_config(roots, {"max_bytes_per_user": 10 << 20})
    config = load_config(roots)
    with State(roots) as st:
        a = st.allocate("s1", 1000, 1, 1, "a", lambda p: True)
        st.set_bytes(a.projid, 6 << 20)
        with pytest.raises(HelperError) as e:
            st.check_user_caps(1000, config, 5 << 20, None)
        assert e.value.code == "exhausted" and "max_bytes_per_user" in e.value.detail
        st.check_user_caps(1000, config, 4 << 20, None)
        st.check_user_caps(1000, config, 10 << 20, st.allocs[a.projid])  # raising its own limit to the cap
        st.check_user_caps(2000, config, 10 << 20, None)
    with State(roots) as st:  # the limit is remembered
        assert st.allocs[a.projid].bytes == 6 << 20


@pytest.mark.parametrize("doc", ['{"max_allocations_per_user": -1}', '{"unknown": 1}', "not json",
                                 '{"max_bytes_per_user": 1.5}'])
def test_a_corrupt_config_is_refused(roots, doc):
    write_config(roots, doc)
    with pytest.raises(HelperError) as e:
        load_config(roots)
    assert e.value.code == "failed"


def test_an_untrusted_config_is_refused(roots):
    write_config(roots, {"max_allocations_per_user": 100000})
    os.chown(f"{roots.config_dir}/helper.json", 1000, 1000)
    with pytest.raises(HelperError):
        load_config(roots)


def test_one_user_at_the_cap_cannot_grow_the_state_file_past_what_others_need(roots):
    """1024 allocations with the longest image ids stay far below the state file's limit."""
    from privileged_helper.state import MAX_ALLOCATIONS_PER_USER, MAX_STATE_FILE

    big = Roots(config_dir=roots.config_dir, state_dir=roots.state_dir, projid_min=1000, projid_max=10 ** 6)
    with State(big) as st:
        for i in range(MAX_ALLOCATIONS_PER_USER):
            st.allocs[1000 + i] = Allocation(1000 + i, "s" * 64, 1000, 2 ** 63, 2 ** 63, "i" * 255, 2 ** 62)
        st.save()
    size = os.stat(f"{roots.state_dir}/projids.json").st_size
    assert size * 50 < MAX_STATE_FILE
    with State(big) as st:
        st.check_user_caps(2000, load_config(big), 1 << 20, None)
        assert len(st.of_user(1000)) == MAX_ALLOCATIONS_PER_USER
