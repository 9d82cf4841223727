"""Fixtures for the integration tests: the real CLI, run as an unprivileged user.

When pytest runs as root (CI: ``make test``), the tests use the user ``rgtest``
(created here if missing, with subordinate ids) and drop to it with ``setpriv``.
When pytest runs as an ordinary user, that user is the test user.

Environment knobs:
  RG_TEST_PYTHON  python of the (world-readable) venv that has rootless_groot
                  installed; default: sys.executable
  RG_TEST_ROOT    base dir for per-test dirs (default /var/tmp/rootless-groot-test)
  RG_TEST_USER    name of the unprivileged user when running as root (default rgtest)

Fixtures:
  test_user                  -> TestUser(name, uid, gid, home, subuid_start, subuid_count,
                                         subgid_start, subgid_count); .prefix() argv to drop to it
  user_tmp                   -> Path: a fresh per-test dir owned by the test user
  as_user(cmd, check=True, input=None, env=None, timeout=120, cwd=None) -> CompletedProcess
  cli(*args, check=True, input=None, env=None, timeout=300) -> CompletedProcess
                                (``<RG_TEST_PYTHON> -m rootless_groot ARGS`` as the test user)
  store_dir                  -> str: a fresh store path (not created); teardown runs
                                delete-store, kills the keeper from <store>/run/keeper.pid,
                                and removes the tree
  store_runner(store)        -> a runc.run_container runner: cmd -> CompletedProcess of
                                ``cli("--store", store, "enter", "--", *cmd, check=False)``
  userns_keeper              -> runc.UsernsKeeper: a stand-in keeper namespace for the
                                test user (for tests of the toolkit itself)
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from runc import UsernsKeeper  # noqa: E402

IS_ROOT = os.geteuid() == 0
TEST_PYTHON = os.environ.get("RG_TEST_PYTHON") or sys.executable
TEST_ROOT = Path(os.environ.get("RG_TEST_ROOT", "/var/tmp/rootless-groot-test"))
TEST_USER_NAME = os.environ.get("RG_TEST_USER", "rgtest")
SUBID_START, SUBID_COUNT = 100000, 65536
USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Every process we start as the test user carries this in its environment, so the
# session's teardown can find leftovers (keepers...) without touching processes of
# other test sessions that may run at the same time.
SESSION_MARK = ("RG_TEST_SESSION", uuid.uuid4().hex)


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a test class for pytest

    name: str
    uid: int
    gid: int
    home: str
    subuid_start: int | None
    subuid_count: int | None
    subgid_start: int | None
    subgid_count: int | None

    @property
    def subuid(self):
        return (self.subuid_start, self.subuid_count) if self.subuid_start is not None else None

    @property
    def subgid(self):
        return (self.subgid_start, self.subgid_count) if self.subgid_start is not None else None

    def prefix(self) -> list[str]:
        """argv prefix that runs a command as this user (empty if we already are it)."""
        if os.geteuid() == self.uid:
            return []
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "--reset-env"]

    def base_env(self, home: str | None = None) -> dict:
        env = {
            "HOME": home or self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": USER_PATH,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            SESSION_MARK[0]: SESSION_MARK[1],
        }
        if not IS_ROOT:
            # keep what an ordinary developer's session gives (e.g. XDG_RUNTIME_DIR)
            for k in ("XDG_RUNTIME_DIR", "TMPDIR"):
                if k in os.environ:
                    env[k] = os.environ[k]
        return env


def _subids(path: str, name: str, uid: int):
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (name, str(uid)):
                    return int(parts[1]), int(parts[2])
    except FileNotFoundError:
        pass
    return None


def _ranges_overlap(path: str, start: int, count: int) -> bool:
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3:
                    s, c = int(parts[1]), int(parts[2])
                    if s < start + count and start < s + c:
                        return True
    except FileNotFoundError:
        pass
    return False


def ensure_test_user(name: str = TEST_USER_NAME) -> TestUser:
    """Create ``name`` with subordinate ids if missing (root only); idempotent."""
    if not IS_ROOT:
        pw = pwd.getpwuid(os.getuid())
    else:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--user-group", name],
                           check=True)
            pw = pwd.getpwnam(name)
        for path in ("/etc/subuid", "/etc/subgid"):
            if _subids(path, pw.pw_name, pw.pw_uid) is None:
                start = SUBID_START
                while _ranges_overlap(path, start, SUBID_COUNT):
                    start += SUBID_COUNT
                with open(path, "a+") as f:
                    f.seek(0)
                    old = f.read()
                    sep = "\n" if old and not old.endswith("\n") else ""
                    f.write(f"{sep}{pw.pw_name}:{start}:{SUBID_COUNT}\n")
        os.makedirs(pw.pw_dir, exist_ok=True)
        os.chown(pw.pw_dir, pw.pw_uid, pw.pw_gid)
    su = _subids("/etc/subuid", pw.pw_name, pw.pw_uid)
    sg = _subids("/etc/subgid", pw.pw_name, pw.pw_uid)
    return TestUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir,
                    su[0] if su else None, su[1] if su else None,
                    sg[0] if sg else None, sg[1] if sg else None)


def _test_root() -> Path:
    """A base dir every test user can traverse."""
    base = TEST_ROOT
    try:
        base.mkdir(parents=True, exist_ok=True)
        if IS_ROOT:
            os.chmod(base, 0o755)
        work = base / "work"
        work.mkdir(exist_ok=True)
        if IS_ROOT:
            os.chmod(work, 0o755)
        if not os.access(work, os.W_OK):
            raise PermissionError(work)
        return work
    except PermissionError:
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"rootless-groot-test-{os.getuid()}"
        work.mkdir(mode=0o755, exist_ok=True)
        return work


def make_user_dir(user: TestUser, prefix: str = "t-") -> Path:
    d = _test_root() / f"{prefix}{uuid.uuid4().hex[:10]}"
    d.mkdir(mode=0o755)
    if IS_ROOT:
        os.chown(d, user.uid, user.gid)
    return d


def _format_failure(what, r: subprocess.CompletedProcess) -> str:
    return (f"{what} exited {r.returncode}\n--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}")


class CommandFailed(AssertionError):
    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


def _run_as(user: TestUser, cmd, *, check=True, input=None, env=None, timeout=120, cwd=None,
            home=None) -> subprocess.CompletedProcess:
    full_env = user.base_env(home)
    if env:
        full_env.update(env)
    argv = user.prefix()
    if argv:
        # setpriv --reset-env drops the environment: pass ours through env(1)
        argv = [*argv, "env", "-i", *[f"{k}={v}" for k, v in full_env.items()]]
    text = not isinstance(input, bytes)
    r = subprocess.run([*argv, *map(str, cmd)], capture_output=True, text=text, input=input,
                       env=full_env, timeout=timeout, cwd=str(cwd or "/"))
    if check and r.returncode != 0:
        raise CommandFailed(_format_failure(" ".join(map(str, cmd)), r), r)
    return r


def popen_cli(user: TestUser, home, *args) -> subprocess.Popen:
    """Start ``<RG_TEST_PYTHON> -m rootless_groot ARGS`` as ``user`` without waiting (text
    pipes). setpriv and env exec, so the returned pid is the CLI's own (signals reach it)."""
    env = user.base_env(str(home))
    argv = [TEST_PYTHON, "-m", "rootless_groot", *map(str, args)]
    prefix = user.prefix()
    if prefix:
        argv = [*prefix, "env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv]
    return subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --------------------------------------------------------------------------- fixtures


def _uid_is_test_users(uid: int | None, user: TestUser) -> bool:
    if uid is None:
        return False
    if uid == user.uid:
        return True
    return bool(user.subuid and user.subuid_start <= uid < user.subuid_start + user.subuid_count)


def _has_session_mark(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return f"{SESSION_MARK[0]}={SESSION_MARK[1]}".encode() in env


def reap_test_user_processes(user: TestUser) -> list[int]:
    """SIGKILL the processes of this test session still running as the test user or
    one of its subordinate uids (found by SESSION_MARK in their environment)."""
    killed = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            if (_uid_is_test_users(_proc_uid(int(p.name)), user)
                    and _has_session_mark(int(p.name))):
                try:
                    os.kill(int(p.name), signal.SIGKILL)
                    killed.append(int(p.name))
                except OSError:
                    pass
    return killed


KEEPER_PREFIX = "rootless-groot-keeper:"


def session_keepers() -> dict[int, str]:
    """Keepers this test session started (session mark) for stores under its test root:
    pid -> store. Other sessions on the machine (parallel suites) are never counted."""
    root = str(_test_root()) + "/"
    found = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv0 = (p / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if argv0.startswith(KEEPER_PREFIX + root) and _has_session_mark(int(p.name)):
            found[int(p.name)] = argv0[len(KEEPER_PREFIX):]
    return found


@pytest.fixture(scope="session")
def test_user() -> TestUser:
    user = ensure_test_user()
    yield user
    # No keeper the tests started may be left: every test deletes its stores, and a keeper
    # whose store is gone ends by itself within a poll interval (namespace.POLL seconds).
    deadline = time.monotonic() + 10
    keepers = session_keepers()
    while keepers and time.monotonic() < deadline:
        time.sleep(0.1)
        keepers = session_keepers()
    # nothing the tests started as the test user may outlive the session
    leftovers = reap_test_user_processes(user)
    if leftovers:
        sys.stderr.write(f"\nconftest: killed {len(leftovers)} leftover process(es) of "
                         f"{user.name}: {leftovers}\n")
    assert not keepers, f"keepers left by the test session: {keepers}"


@pytest.fixture
def user_tmp(test_user) -> Path:
    d = make_user_dir(test_user)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def user_home(test_user, user_tmp) -> Path:
    """A per-test HOME (with XDG_DATA_HOME etc. below it) owned by the test user."""
    h = user_tmp / "home"
    h.mkdir(mode=0o755)
    if IS_ROOT:
        os.chown(h, test_user.uid, test_user.gid)
    return h


@pytest.fixture
def as_user(test_user, user_home):
    """``as_user(cmd, check=True, input=None, env=None, timeout=120, cwd=None)``: run an
    argv as the test user (HOME = the per-test home)."""

    def run(cmd, *, check=True, input=None, env=None, timeout=120, cwd=None):
        return _run_as(test_user, cmd, check=check, input=input, env=env, timeout=timeout,
                       cwd=cwd or user_home, home=str(user_home))

    return run


@pytest.fixture
def cli(test_user, user_home):
    """``cli(*args, check=True, input=None, env=None, timeout=300)``: run
    ``<RG_TEST_PYTHON> -m rootless_groot ARGS`` as the test user, with HOME and the XDG
    dirs inside a per-test home it owns, cwd = that home. Raises CommandFailed (with
    stdout and stderr) on a non-zero exit when check=True."""
    xdg = {
        "XDG_DATA_HOME": str(user_home / ".local" / "share"),
        "XDG_CONFIG_HOME": str(user_home / ".config"),
        "XDG_CACHE_HOME": str(user_home / ".cache"),
    }

    def run(*args, check=True, input=None, env=None, timeout=300):
        e = dict(xdg)
        if env:
            e.update(env)
        return _run_as(test_user, [TEST_PYTHON, "-m", "rootless_groot", *args], check=check,
                       input=input, env=e, timeout=timeout, cwd=user_home, home=str(user_home))

    run.python = TEST_PYTHON
    return run


def _proc_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _kill_keeper(store: Path, owner_uid: int) -> None:
    """Kill the keeper recorded in <store>/run/keeper.pid, if it is the test user's."""
    pidfile = store / "run" / "keeper.pid"
    try:
        text = pidfile.read_text().split()
        pid = int(text[0]) if text else 0
    except (OSError, ValueError):
        return
    if pid <= 1 or _proc_uid(pid) != owner_uid:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        for _ in range(50):
            if _proc_uid(pid) is None:
                return
            time.sleep(0.02)


def _kill_user_procs_under(path: Path, uid: int) -> None:
    """Last resort: kill processes of ``uid`` whose cwd or root lies in ``path``."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if p.stat().st_uid != uid:
                continue
            cwd = os.readlink(p / "cwd")
        except OSError:
            continue
        if cwd == str(path) or cwd.startswith(str(path) + "/"):
            try:
                os.kill(int(p.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def store_dir(test_user, cli):
    """A fresh store path (not yet created) in a dir owned by the test user."""
    parent = make_user_dir(test_user, prefix="store-")
    store = parent / "store"
    yield str(store)
    try:
        cli("--store", str(store), "delete-store", check=False, timeout=60)
    except Exception:
        pass
    _kill_keeper(store, test_user.uid)
    _kill_user_procs_under(parent, test_user.uid)
    shutil.rmtree(parent, ignore_errors=True)
    if parent.exists() and not IS_ROOT:
        # files owned by subordinate ids: remove them from inside a namespace
        subprocess.run(["unshare", "--user", "--map-root-user", "--map-auto", "rm", "-rf",
                        str(parent)], capture_output=True)


@pytest.fixture
def tmpfs_store(test_user, user_tmp, cli):
    """``tmpfs_store(size)`` -> (mount point, store path): a store on a tmpfs of the test user's
    (a small one is a full disk, for real); teardown deletes the store and unmounts."""
    made = []

    def make(size: str):
        mnt = user_tmp / f"fs{len(made)}"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},uid={test_user.uid},gid={test_user.gid},mode=0755",
                        "tmpfs", str(mnt)], check=True)
        made.append(mnt)
        return mnt, str(mnt / "store")

    yield make
    for mnt in made:
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=False)
        cli("--store", str(mnt / "store"), "delete-store", check=False)
        _kill_keeper(mnt / "store", test_user.uid)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def store_runner(cli):
    """``store_runner(store)`` -> a runner for runc.run_container that executes commands as
    uid 0 in the store's namespace through ``rootless-groot enter``."""

    def make(store, timeout=300):
        def runner(cmd):
            return cli("--store", str(store), "enter", "--", *cmd, check=False, timeout=timeout)
        return runner

    return make


@pytest.fixture
def userns_keeper(test_user):
    """A stand-in keeper (user+mount namespace of the test user, subids mapped)."""
    env = test_user.base_env()
    prefix = test_user.prefix()
    if prefix:  # setpriv --reset-env: pass the environment (and the session mark) through env(1)
        prefix += ["env", "-i", *[f"{k}={v}" for k, v in env.items()]]
    k = UsernsKeeper(prefix, test_user.uid, test_user.gid, test_user.subuid,
                     test_user.subgid, env=env)
    yield k
    k.stop()
