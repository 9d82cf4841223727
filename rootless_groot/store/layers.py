"""The layer cache: each layer unpacked once into ``layers/<chainid>``, installed by rename.

Missing layers of an image are unpacked in parallel by forked workers (the parent stays
single-threaded, which ``setns`` and ``fork`` both need). Each worker holds the layer's
flock while it works, so parallel creates of one image unpack each layer once; a worker
killed halfway leaves only a directory in ``tmp/``, which ``clean`` removes.
"""
from __future__ import annotations

import errno
import os
import time

from .. import log
from ..errors import GrootError, LayerError
from ..fastjson import dumps, loads
from .locks import flocked, try_flock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from ..sources.base import ImageSource, LayerDescriptor
    from .context import StoreContext

LAYER_META = "layer.json"
# What a blob damaged on its way here looks like (verify.py, decompress.py): worth one more fetch.
TRANSFER_ERRORS = ("digest mismatch", "size mismatch", "corrupt gzip", "truncated gzip", "corrupt zstd",
                   "truncated zstd")


def layer_size(ctx: StoreContext, chain_id: str) -> int:
    """Bytes of regular files in the layer, as recorded at unpack time (rebuilt if damaged)."""
    path = os.path.join(ctx.store.layer_dir(chain_id), LAYER_META)
    try:
        with open(path) as f:
            return int(loads(f.read())["size"])
    except FileNotFoundError:
        if not os.path.isdir(ctx.store.layer_dir(chain_id)):
            return 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return rebuild_layer_meta(ctx, chain_id)["size"]


def rebuild_layer_meta(ctx: StoreContext, chain_id: str) -> dict:
    """A damaged or missing ``layer.json``: size and entry count counted again from the files
    (the digests it held are lost; ``check`` then relies on the layer's manifest)."""
    size = entries = 0
    for root, dirs, files in os.walk(ctx.store.layer_diff(chain_id)):
        entries += len(dirs) + len(files)
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if st.st_mode & 0o170000 == 0o100000:
                size += st.st_size
    meta = {"chain_id": chain_id, "size": size, "entries": entries, "rebuilt": True}
    path = os.path.join(ctx.store.layer_dir(chain_id), LAYER_META)
    log.warn("layer.meta-rebuilt", chain_id=chain_id, text=f"{path} was damaged: rebuilt (size {size})")
    try:
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(dumps(meta))
        os.rename(tmp, path)
    except OSError as e:  # read-only or not ours: the count still serves this command
        log.debug("layer.meta-rebuild-failed", error=str(e))
    return meta


def ensure_layers(ctx: StoreContext, source: ImageSource, layers: list[LayerDescriptor],
                  max_layer_size: int | None = None, progress: bool = False) -> None:
    """Make every layer present in the cache, unpacking the missing ones (in parallel).

    The missing layers are shared out by size among at most one process per CPU: this one
    and forked workers (a fork starts with all of this process's pages: one fewer keeps the
    create's summed memory down). Each unpacks its share and installs it with one ``syncfs``
    (a 128-layer image costs one fork and two syncs on two CPUs, not 128 of each).
    ``max_layer_size`` (the disk limit, when the image counts against it) stops a layer that
    cannot fit as soon as that is known.
    """
    missing = [layer for layer in layers if not os.path.isdir(ctx.store.layer_dir(layer.chain_id))]
    if not missing:
        return
    ctx.enter()
    # A layer with a base directory (CF's droplet) copies that directory's owner and mode from
    # the layers below it, so it is unpacked after them, one at a time.
    based = [layer for layer in missing if layer.base_dir]
    view = None
    if progress:  # a terminal shows it (progress.py); rich is imported only here
        from ..progress import View

        view = View(missing)
    missing = [layer for layer in missing if not layer.base_dir]
    try:
        if missing:
            shares = _share_out(missing, min(len(missing), os.cpu_count() or 2))
            if len(shares) == 1:
                install_layers(ctx, source, shares[0], max_layer_size, reporter=view and view.reporter())
            else:
                errors = _run_forked([_task(ctx, source, share, max_layer_size) for share in shares[1:]],
                                     len(shares) - 1, own=_task(ctx, source, shares[0], max_layer_size), view=view)
                for message in errors:
                    if message is not None:
                        raise LayerError(message)
        if based:
            chains = [layer.chain_id for layer in layers]
            lowers = {c: chains[:i][::-1] for i, c in enumerate(chains)}
            install_layers(ctx, source, based, max_layer_size, lowers, view and view.reporter())
    finally:
        if view is not None:
            view.close()


def _share_out(layers: list[LayerDescriptor], workers: int) -> list[list[LayerDescriptor]]:
    """Biggest first, each to the least loaded worker; every share keeps the image's order."""
    loads_: list[int] = [0] * workers
    owner: dict[int, int] = {}
    for index in sorted(range(len(layers)), key=lambda i: -(layers[i].size or 0)):
        worker = loads_.index(min(loads_))
        loads_[worker] += (layers[index].size or 0) + 1
        owner[index] = worker
    shares: list[list[LayerDescriptor]] = [[] for _ in range(workers)]
    for index, layer in enumerate(layers):
        shares[owner[index]].append(layer)
    return [share for share in shares if share]


def _task(ctx: StoreContext, source: ImageSource, share: list[LayerDescriptor],
          max_layer_size: int | None) -> Callable[[Any], None]:
    """The work of one process; its argument is where progress goes (None: nowhere)."""
    return lambda reporter: install_layers(ctx, source, share, max_layer_size, reporter=reporter)


def install_layers(ctx: StoreContext, source: ImageSource, layers: list[LayerDescriptor],
                   max_layer_size: int | None = None, lowers: dict[str, list[str]] | None = None,
                   reporter=None) -> None:
    """Unpack layers into ``tmp/`` and install them: one ``syncfs``, then one rename each.

    Each layer's lock is held from the check to the rename. A layer whose lock another
    process holds (it is unpacking it) is left for the end, when this process holds no lock,
    so two creates never wait for each other; it is then waited for, usually found finished.
    If a layer fails, the layers already unpacked are still installed, then the error rises.
    """
    batch: list[tuple[LayerDescriptor, int, str, dict]] = []
    deferred: list[LayerDescriptor] = []
    failure: BaseException | None = None
    try:
        for layer in layers:
            final = ctx.store.layer_dir(layer.chain_id)
            if os.path.isdir(final):
                continue
            lock = try_flock(ctx.store.lock_path(f"layer-{layer.chain_id}"))
            if lock is None:
                deferred.append(layer)
                continue
            if os.path.isdir(final):
                os.close(lock)
                continue
            try:
                _reclaim(ctx, layer.chain_id)
                work, meta = _unpack(ctx, source, layer, max_layer_size, (lowers or {}).get(layer.chain_id, ()),
                                     reporter)
            except BaseException as e:
                os.close(lock)
                failure = e
                break
            batch.append((layer, lock, work, meta))
        _install(ctx, batch, reporter)
    finally:
        for _, lock, work, _ in batch:
            os.close(lock)
            if os.path.lexists(work):
                remove_tree(work)
    if failure is not None:
        raise failure
    for layer in deferred:
        with flocked(ctx.store.lock_path(f"layer-{layer.chain_id}")):
            if os.path.isdir(ctx.store.layer_dir(layer.chain_id)):
                if reporter:
                    reporter.done(layer)  # another command unpacked it meanwhile
                continue
            _reclaim(ctx, layer.chain_id)
            work, meta = _unpack(ctx, source, layer, max_layer_size, (lowers or {}).get(layer.chain_id, ()), reporter)
            try:
                _install(ctx, [(layer, -1, work, meta)], reporter)
            finally:
                if os.path.lexists(work):
                    remove_tree(work)


def _reclaim(ctx: StoreContext, chain_id: str) -> None:
    """Remove what a killed command left of this layer in ``tmp/``: only the holder of the
    layer's lock (us, now) ever unpacks it, so any such directory is dead."""
    prefix = f"layer-{chain_id}-"
    for name in os.listdir(ctx.store.tmp):
        if name.startswith(prefix):
            log.info("layer.partial-reclaimed", chain_id=chain_id, path=name)
            remove_tree(os.path.join(ctx.store.tmp, name))


def _unpack(ctx: StoreContext, source: ImageSource, layer: LayerDescriptor,
            max_size: int | None = None, lowers: list[str] | tuple[str, ...] = (), reporter=None) -> tuple[str, dict]:
    """Unpack and verify one layer into a new ``tmp/`` directory; (that directory, its metadata).

    ``lowers``: chain IDs of the layers below it, top first (only a base-directory layer needs them).
    """
    from ..layers.pipeline import unpack_blob

    started = time.monotonic()
    work = make_temp_dir(ctx.store.tmp, f"layer-{layer.chain_id}-")
    chown = ctx.meta.rootless or os.geteuid() == 0
    try:
        diff = os.path.join(work, "diff")
        for attempt in (1, 2):
            os.mkdir(diff, 0o755)
            dest = _make_base_dir(ctx, diff, layer, lowers, chown) if layer.base_dir else diff
            try:
                with source.open_blob(layer) as raw:
                    result = unpack_blob(
                        reporter.wrap(layer, raw) if reporter else raw,
                        dest,
                        digest=layer.digest if layer.verify_digest else None,
                        size=layer.size if layer.verify_size else None,
                        diff_id=layer.diff_id if layer.verify_diff_id else None,
                        chown=chown,
                        allow_devices=not ctx.meta.rootless,
                        id_translate=ctx.id_translate(),
                        what=layer.name,
                        max_size=max_size,
                    )
                break
            except LayerError as e:
                if attempt == 2 or not any(sign in str(e) for sign in TRANSFER_ERRORS):
                    raise
                # Damaged in transit, maybe once (a proxy, a flaky link): one more try from scratch.
                log.warn("layer.fetch-again", layer=layer.name, error=str(e),
                         text=f"{e}: fetching {layer.name} once more")
                remove_tree(diff)
        if reporter:
            reporter.verifying(layer)  # the digests are checked: what is left is the install
        if result.squashed_owners:
            log.warn("layer.owners-squashed", layer=layer.name, count=result.squashed_owners,
                     text=f"{layer.name}: {result.squashed_owners} files are owned by ids outside the store's "
                          "mapping and were given to the store owner (add subordinate ids in /etc/subuid)")
        if result.stripped_setid:
            log.warn("layer.setid-stripped", layer=layer.name, count=result.stripped_setid,
                     text=f"{layer.name}: {result.stripped_setid} setuid/setgid files owned by unmapped ids "
                          "lost those bits (the store owner must not gain them)")
        meta = {"chain_id": layer.chain_id, "diff_id": result.diff_id, "digest": layer.digest,
                "size": result.size, "entries": result.entries}
        from .integrity import write_records

        recorded = time.monotonic()
        write_records(ctx, work)  # what `create` and `check` compare the cached layer with
        recorded = time.monotonic() - recorded
        with open(os.path.join(work, LAYER_META), "w") as f:
            f.write(dumps(meta))
        os.chmod(work, 0o755)
    except OSError as e:
        remove_tree(work)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise GrootError(f"{layer.name}: {e.strerror} while unpacking into {ctx.store.tmp}") from None
        raise
    except BaseException:
        remove_tree(work)
        raise
    log.info("layer.unpacked", layer=layer.name, chain_id=layer.chain_id, size=result.size,
             entries=result.entries, seconds=round(time.monotonic() - started, 3), record_seconds=round(recorded, 3))
    return work, meta


def _make_base_dir(ctx: StoreContext, diff: str, layer: LayerDescriptor, lowers, chown: bool) -> str:
    """Create ``layer.base_dir`` in the new layer, each component with the owner and mode it has
    in the nearest layer below that holds it (GrootFS copies them from the parent layer), so
    the droplet does not change who owns ``/home/vcap``. Returns the directory to unpack into."""
    import stat

    assert layer.base_dir
    path, rel = diff, ""
    for part in layer.base_dir.split("/"):
        rel = f"{rel}/{part}" if rel else part
        st = None
        for chain_id in lowers:
            try:
                st = os.lstat(os.path.join(ctx.store.layer_diff(chain_id), rel))
                break
            except FileNotFoundError:
                continue
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise LayerError(f"{layer.name}: base directory /{rel} not found in the layers below it")
        path = os.path.join(path, part)
        os.mkdir(path, 0o700)
        if chown:
            os.lchown(path, st.st_uid, st.st_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))
    return path


def _install(ctx: StoreContext, batch: list[tuple[LayerDescriptor, int, str, dict]], reporter=None) -> None:
    """One ``syncfs`` for the whole batch (durable before any rename), then the renames."""
    from .. import syscalls

    if not batch:
        return
    fd = os.open(ctx.store.tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syscalls.syncfs(fd)
    finally:
        os.close(fd)
    for layer, _, work, _ in batch:
        os.rename(work, ctx.store.layer_dir(layer.chain_id))
        ensure_short_link(ctx, layer.chain_id)
        if reporter:
            reporter.done(layer)


def make_temp_dir(parent: str, prefix: str) -> str:
    """A new private directory in ``parent`` (``tempfile`` would cost an import per command)."""
    for _ in range(100):
        path = os.path.join(parent, f"{prefix}{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise GrootError(f"cannot create a temporary directory in {parent}")


def ensure_short_link(ctx: StoreContext, chain_id: str) -> str:
    """``l/<short>`` -> ``../layers/<chainid>/diff``: keeps mount options under a page."""
    link = ctx.store.short_link(chain_id)
    target = f"../layers/{chain_id}/diff"
    try:
        os.symlink(target, link)
    except FileExistsError:
        if os.readlink(link) != target:
            raise GrootError(f"short link {link} collides with another layer") from None
    return link


def remove_tree(path: str) -> None:
    """Remove a directory tree we own (inside the namespace, subordinate-owned files included).

    The usual image or layer goes in-process (no fork); a tree this walk cannot handle —
    nested deeper than the recursion limit by a hostile layer, unreadable directories —
    goes to GNU ``rm -rf``, whose fd-based walk has no depth limit. Callers unmount first
    (a btrfs image holds a subvolume, which is removed like a directory).
    """
    if not os.path.lexists(path):
        return
    try:
        remove_in_process(path)
        return
    except (OSError, RecursionError):
        pass
    if _spawn("rm", "-rf", "--", path) != 0 and os.path.lexists(path):
        # Without CAP_DAC_OVERRIDE (not root, not in the namespace) read-only dirs block rm.
        _spawn("chmod", "-R", "u+rwX", "--", path)
        _spawn("rm", "-rf", "--", path)
    if os.path.lexists(path):
        raise GrootError(f"cannot remove {path}")


def remove_in_process(path: str) -> None:
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return
    for _, dirs, files, dir_fd in os.fwalk(path, topdown=False):
        for name in files:
            os.unlink(name, dir_fd=dir_fd)
        for name in dirs:  # fwalk lists symlinks to directories here too
            try:
                os.rmdir(name, dir_fd=dir_fd)
            except NotADirectoryError:
                os.unlink(name, dir_fd=dir_fd)
    os.rmdir(path)


def _spawn(tool: str, *args: str) -> int:
    binary = f"/bin/{tool}" if os.path.exists(f"/bin/{tool}") else f"/usr/bin/{tool}"
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    pid = os.posix_spawn(binary, [tool, *args], {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, file_actions=quiet)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _run_forked(tasks: list[Callable[[Any], None]], max_workers: int,
                own: Callable[[Any], None] | None = None, view=None) -> list[str | None]:
    """Run each task in a forked child, at most ``max_workers`` at once, and ``own`` here once
    they are started; collect error messages. An exception of ``own`` rises after the children
    are reaped. With a progress ``view``, the children report through a pipe that this process
    reads while it unpacks its own share and while it waits."""
    import signal

    from .. import syscalls

    results: list[str | None] = [None] * len(tasks)
    running: dict[int, tuple[int, int]] = {}
    progress_w = view.open_pipe() if view is not None else None

    def wait_any() -> tuple[int, int]:
        if view is None:
            return os.wait()
        while True:
            view.poll(0.1)
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                return pid, status

    def reap_one() -> None:
        pid, status = wait_any()
        if pid not in running:
            return
        index, read_fd = running.pop(pid)
        with os.fdopen(read_fd, "rb") as r:
            message = r.read(8192).decode(errors="replace").strip()
        if os.waitstatus_to_exitcode(status) != 0:
            results[index] = message or f"layer worker died with status {os.waitstatus_to_exitcode(status)}"

    own_error: BaseException | None = None
    try:
        for index, task in enumerate(tasks):
            while len(running) >= max_workers:
                reap_one()
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    os.close(read_fd)
                    syscalls.set_pdeathsig(signal.SIGKILL)
                    if progress_w is not None:
                        from ..progress import PipeReporter

                        task(PipeReporter(progress_w))
                    else:
                        task(None)
                except GrootError as e:
                    os.write(write_fd, str(e).encode()[:8000])
                    code = 1
                except BaseException as e:  # noqa: BLE001 - reported to the parent as one line
                    os.write(write_fd, f"unpacking failed: {e!r}".encode()[:8000])
                    code = 2
                os._exit(code)
            os.close(write_fd)
            running[pid] = (index, read_fd)
        if own is not None:
            try:
                own(view and view.reporter())
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 - raised once the workers are done
                own_error = e
        while running:
            reap_one()
    except KeyboardInterrupt:
        # Interrupted (SIGTERM, Ctrl-C), here or while waiting: the workers remove their
        # partial layers, then we go.
        for pid in running:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        while running:
            try:
                pid, _ = os.wait()
                running.pop(pid, None)
            except (ChildProcessError, KeyboardInterrupt):
                break
        raise
    except BaseException:
        while running:
            reap_one()
        raise
    finally:
        if view is not None:
            view.close_pipe()
    if own_error is not None:
        raise own_error
    return results
