"""The store's user + mount namespace, held by a keeper process (like podman's pause process).

The first command that needs the namespace starts the keeper: a detached process that
unshares a user and a mount namespace, gets the store's ID mapping written by
``newuidmap``/``newgidmap`` (or directly, for a single-ID mapping), and then waits. Every
later command joins it with ``setns`` (one join per command), so the mapping is set up once
and overlay mounts made inside live on between commands. If the keeper is gone (reboot,
killed), the next command starts a new one and the caller remounts the images.

The keeper ends with its store: it is a ``/bin/sh`` loop (about 2 MB) that holds the store
directory open and checks every ``POLL`` seconds, with the shell's built-in ``test -ef``, that
the store path still names that directory; removed or replaced, the keeper exits. It is found
by its ``argv[0]`` (``rootless-groot-keeper:<store>``) when ``run/keeper.pid`` is lost.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

from . import log
from .errors import NamespaceError
from .mappings import IDMapping, is_single_id, newidmap_args
from .store.layout import Store, StoreMeta
from .store.locks import flocked

KEEPER_NAME = "rootless-groot-keeper"
POLL = 2  # seconds between the keeper's checks that its store still exists


def keeper_pid_path(store: Store) -> str:
    return os.path.join(store.run, "keeper.pid")


def _keeper_argv0(store: Store) -> bytes:
    return f"{KEEPER_NAME}:{store.root}".encode()


def is_keeper(pid: int, store: Store, owner_uid: int | None = None) -> bool:
    """Whether ``pid`` is a keeper of this store that belongs to us (or to ``owner_uid``: root
    looking for the store owner's keeper)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0]
        return argv0 == _keeper_argv0(store) and os.stat(f"/proc/{pid}").st_uid == (
            os.getuid() if owner_uid is None else owner_uid)
    except OSError:
        return False


def running_keeper(store: Store, owner_uid: int | None = None) -> int | None:
    """The pid of this store's live keeper, or None.

    A pid alone could be reused, so the process must also carry the store in its argv[0]
    and belong to us (or to ``owner_uid``). Without a usable pid file, the keeper is looked
    for in ``/proc``.
    """
    try:
        with open(keeper_pid_path(store)) as f:
            pid = int(f.readline())
        if is_keeper(pid, store, owner_uid):
            return pid
    except (OSError, ValueError):
        pass
    found = find_keepers(store, owner_uid)
    if not found:
        return None
    if owner_uid is None:
        _write_pid_file(store, found[0])  # found without its pid file: record it again
    return found[0]


def _write_pid_file(store: Store, pid: int) -> None:
    tmp = f"{keeper_pid_path(store)}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(f"{pid}\n")
        os.rename(tmp, keeper_pid_path(store))
    except OSError as e:
        log.debug("keeper.pid-file-failed", error=str(e))


def find_keepers(store: Store, owner_uid: int | None = None) -> list[int]:
    """Every live keeper of this store that belongs to us, oldest first, found in ``/proc``.

    A keeper forking its ``sleep`` shows the same argv[0] for an instant: only processes
    whose parent is not a keeper of the store count.
    """
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and is_keeper(int(name), store, owner_uid):
            found.append(int(name))
    keepers = []
    for pid in found:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid not in found:
            keepers.append(pid)
    return sorted(keepers)


def _sleep_binary() -> str:
    for path in ("/bin/sleep", "/usr/bin/sleep"):
        if os.access(path, os.X_OK):
            return path
    import shutil

    found = shutil.which("sleep")
    if not found:
        raise NamespaceError("cannot start the store keeper: no `sleep` binary found")
    return found


def _start_keeper(store: Store) -> tuple[int, int, BinaryIO]:
    """Fork a fully detached keeper that unshares user+mount namespaces.

    Returns its pid, the write end of the pipe that tells it to go on once mapped, and the
    pipe it reports on, which reaches EOF once it has exec'd (its end is close-on-exec).

    Double fork so the keeper is reparented at once (no zombie in a long-lived caller);
    ``setsid``, all inherited fds closed, stdio on /dev/null, cwd /, so it holds nothing
    of the caller's open (a CI job's output pipe in particular).
    """
    sleep_bin = _sleep_binary()
    ready_r, ready_w = os.pipe()  # keeper -> us: its pid, then "unshared" or an error
    go_r, go_w = os.pipe()  # us -> keeper: the mapping is written
    middle = os.fork()
    if middle == 0:
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _keeper_main(ready_w, go_r, (ready_r, go_w), store, sleep_bin)
        finally:
            os._exit(1)
    os.close(ready_w)
    os.close(go_r)
    os.waitpid(middle, 0)
    ready = os.fdopen(ready_r, "rb")
    try:
        line = ready.readline()
        status = ready.readline().strip()
        pid = int(line)
        if status != b"unshared":
            from .hints import userns_problem

            code = status.split(b" ", 1)[0]
            raise NamespaceError(userns_problem(int(code)) if code.isdigit() else
                                 f"cannot create a user namespace: {status.decode(errors='replace')}")
        return pid, go_w, ready
    except ValueError:
        ready.close()
        os.close(go_w)
        raise NamespaceError("the store keeper died while starting") from None
    except BaseException:
        ready.close()
        raise


def _keeper_main(ready_w: int, go_r: int, close_fds: tuple[int, int], store: Store, sleep_bin: str) -> None:
    """Body of the keeper process (never returns)."""
    for fd in close_fds:
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    # Everything else inherited goes; closerange uses close_range(2), no loop up to RLIMIT_NOFILE.
    low = 3
    for fd in sorted((ready_w, go_r)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 30)
    os.chdir("/")
    os.write(ready_w, f"{os.getpid()}\n".encode())
    from . import syscalls

    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNS)
    except OSError as e:
        os.write(ready_w, f"{e.errno} {e.strerror}\n".encode())
        os._exit(1)
    os.write(ready_w, b"unshared\n")  # ready_w stays open until exec: the parent waits for that EOF
    if os.read(go_r, 1) != b"g":
        os._exit(1)
    os.close(go_r)
    try:
        syscalls.mount("none", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    except OSError:
        pass
    if ready_w == 3:  # fd 3 is taken for the store below; ready_w (close-on-exec) must survive until exec
        ready_w, old = os.dup(ready_w), ready_w
        os.close(old)
    # Hold the store directory as fd 3; end when its path names another directory or none.
    try:
        fd = os.open(store.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        os._exit(1)
    if fd != 3:
        os.dup2(fd, 3)
        os.close(fd)
    os.set_inheritable(3, True)
    script = f'while [ /proc/self/fd/3 -ef "$0" ]; do {sleep_bin} {POLL}; done'
    os.execv("/bin/sh", [_keeper_argv0(store).decode(), "-c", script, store.root])


def _check_apparmor() -> None:
    """Fail early and clearly where AppArmor would leave our user namespace without capabilities."""
    try:
        with open("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") as f:
            restricted = f.read(1) == "1"
    except OSError:
        return
    if restricted:
        from .hints import apparmor_advice, apparmor_blocks_us

        if apparmor_blocks_us():
            raise NamespaceError("cannot use user namespaces: " + apparmor_advice())


def _write_mappings(pid: int, meta: StoreMeta, newuidmap: str, newgidmap: str) -> None:
    """Map the keeper's namespace as recorded in the store."""
    if is_single_id(meta.uid_mappings) and is_single_id(meta.gid_mappings) and _maps_self(meta):
        # An unprivileged process may map just itself, without newuidmap (no /etc/subuid needed).
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        _write_map(f"/proc/{pid}/uid_map", meta.uid_mappings)
        _write_map(f"/proc/{pid}/gid_map", meta.gid_mappings)
        return
    import subprocess

    for binary, maps in ((newuidmap, meta.uid_mappings), (newgidmap, meta.gid_mappings)):
        try:
            proc = subprocess.run([binary, str(pid), *newidmap_args(maps)], capture_output=True, text=True)
        except FileNotFoundError:
            raise NamespaceError(
                f"{binary} not found: install the `uidmap` package, or init the store with a single-ID mapping"
            ) from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().replace("\n", " ")
            raise NamespaceError(
                f"{os.path.basename(binary)} failed for mappings {' '.join(map(str, maps))}: {detail} "
                "(check /etc/subuid and /etc/subgid)"
            )


def _maps_self(meta: StoreMeta) -> bool:
    return meta.uid_mappings[0].host_id == os.getuid() and meta.gid_mappings[0].host_id == os.getgid()


def _write_map(path: str, maps: tuple[IDMapping, ...]) -> None:
    with open(path, "w") as f:
        f.write("".join(f"{m.ns_id} {m.host_id} {m.size}\n" for m in maps))


def ensure_keeper(store: Store, meta: StoreMeta, newuidmap: str, newgidmap: str) -> tuple[int, bool]:
    """Return the keeper's pid, starting it if needed; the flag says whether it is new."""
    pid = running_keeper(store)
    if pid is not None:
        return pid, False
    with flocked(store.lock_path("keeper")):
        pid = running_keeper(store)
        if pid is not None:
            return pid, False
        _check_apparmor()
        pid, go_w, ready = _start_keeper(store)
        try:
            _write_mappings(pid, meta, newuidmap, newgidmap)
            os.write(go_w, b"g")
            # Wait for the exec: until then its argv0 is not the keeper's, and running_keeper()
            # in the next command would not recognise it (and start a second keeper).
            ready.read()
        except BaseException:
            os.kill(pid, 9)  # SIGKILL
            raise
        finally:
            os.close(go_w)
            ready.close()
        _write_pid_file(store, pid)
        log.info("keeper.started", pid=pid, store=store.root)
        return pid, True


def join(pid: int) -> None:
    """setns into the keeper's user then mount namespace. Must be called while single-threaded."""
    from . import syscalls

    try:
        user_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        mnt_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NamespaceError(f"cannot open the store keeper's namespaces: {e.strerror}") from None
    try:
        cwd = os.getcwd()
        # The keeper may still be between unshare and exec; its mapping is written before
        # its pid file, so by now the namespaces are complete.
        syscalls.setns(user_fd, syscalls.CLONE_NEWUSER)
        syscalls.setns(mnt_fd, syscalls.CLONE_NEWNS)
        try:
            os.chdir(cwd)
        except OSError:
            os.chdir("/")
    except OSError as e:
        raise NamespaceError(f"cannot join the store keeper's namespaces: {e.strerror}") from None
    finally:
        os.close(user_fd)
        os.close(mnt_fd)


def stop_keeper(store: Store, owner_uid: int | None = None) -> None:
    """Kill the store's keepers, with or without a pid file (their mounts vanish with their
    mount namespace)."""
    pids = set(find_keepers(store, owner_uid))
    pid = running_keeper(store, owner_uid)
    if pid is not None:
        pids.add(pid)
    for pid in pids:
        try:
            # SIGKILL to its process group (set up by the keeper's setsid): the keeper and
            # the `sleep` it may be waiting for, which would otherwise linger a moment.
            group = os.getpgid(pid)
            if group != os.getpgrp() and group > 1:
                os.killpg(group, 9)
            else:
                os.kill(pid, 9)
        except ProcessLookupError:
            pass
    try:
        os.unlink(keeper_pid_path(store))
    except FileNotFoundError:
        pass
