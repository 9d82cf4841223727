"""Command line: GrootFS's commands and flags (Garden's image-plugin contract), plus extras.

Success output goes to stdout (JSON where Garden expects it); any failure is one line on
stdout and exit status 1 (GrootFS convention); logs go to stderr or ``--log-file``.
Heavy modules are imported inside the commands that need them.
"""
from __future__ import annotations

import os
import sys

from . import __version__, log
from .argv import Command, Opt, help_text, parse
from .errors import GrootError, NotFound, StoreError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .argv import Args

DESCRIPTION = "Rootless container image manager (GrootFS-compatible)."

GLOBAL_OPTS = [
    Opt("--config", help="GrootFS-style YAML config file (flags override it)", metavar="FILE"),
    Opt("--store", help="store directory (default: $XDG_DATA_HOME/rootless-groot; /var/lib/rootless-groot as root)",
        metavar="DIR"),
    Opt("--log-level", help="debug, info, error or fatal (default: fatal)", metavar="LEVEL"),
    Opt("--log-file", help="append logs to this file instead of stderr", metavar="FILE"),
    Opt("--newuidmap-bin", help="newuidmap binary (default: newuidmap)", metavar="PATH"),
    Opt("--newgidmap-bin", help="newgidmap binary (default: newgidmap)", metavar="PATH"),
    Opt("--tardis-bin", help="GrootFS's quota helper; accepted and unused (see docs/quota.md)", metavar="PATH"),
    Opt("--metron-endpoint", help="HOST:PORT to send GrootFS's metrics to over UDP (dropsonde)", metavar="ADDR"),
]

_REGISTRY_OPTS = [
    Opt("--username", help="registry user (Garden passes it)", metavar="U"),
    Opt("--password", help="registry password", metavar="P"),
    Opt("--insecure-registry", "append", help="allow self-signed TLS or plain HTTP for this HOST[:PORT] (repeatable)",
        metavar="HOST"),
    Opt("--platform", help="OS/ARCH[/VARIANT] to pick from a multi-platform image", metavar="PLATFORM"),
    Opt("--registry-ca", help="extra CA certificate(s) (PEM) to trust for registries", metavar="FILE"),
    Opt("--registry-mirror", "append", help="a Docker Hub mirror to try first (repeatable; also registries.conf)",
        metavar="LOC"),
    Opt("--pull", dest="pull_policy", choices=("always", "missing", "never"), metavar="always|missing|never",
        help="always: ask the registry for the tag (default); missing: reuse the store's last resolution; never"),
    Opt("--quiet,-q", "true", help="no progress on stderr"),
    Opt("--registry-timeout", "int", help="fail when a registry sends nothing for this long (default 30)",
        metavar="SECONDS"),
]

COMMANDS = {c.name: c for c in [
    Command("init-store", "create a store and record its id mappings", [
        Opt("--uid-mapping", "append", help="NS:HOST:SIZE (repeatable)", metavar="NS:HOST:SIZE"),
        Opt("--gid-mapping", "append", help="NS:HOST:SIZE (repeatable)", metavar="NS:HOST:SIZE"),
        Opt("--store-size-bytes", "int", help="as root: an XFS backing file of this size with project quotas",
            metavar="N"),
        Opt("--with-direct-io", "true", help="accepted for GrootFS compatibility"),
    ]),
    Command("delete-store", "unmount and remove the store and everything in it", [
        Opt("--force", "true", help="also when its store.json is corrupt or missing"),
    ]),
    Command("create", "make a root filesystem for a container from an image", [
        Opt("--disk-limit-size-bytes", "int", help="disk limit for image + writes (see docs/quota.md)", metavar="N"),
        Opt("--exclude-image-from-quota", "true", help="count only the container's writes against the limit"),
        Opt("--skip-layer-validation", "true", help="oci:// only: do not check layers' sizes and digests (GrootFS)"),
        Opt("--with-clean", "true", help="run clean before creating"),
        Opt("--without-clean", "true", help="do not run clean first (default)"),
        Opt("--threshold-bytes", "int", help="clean only above this store size", metavar="N"),
        Opt("--with-mount", "false", dest="without_mount", help="mount the rootfs (default)"),
        Opt("--without-mount", "true", help="return the overlay in the JSON for the runtime to mount"),
        *_REGISTRY_OPTS,
        Opt("--clean-log-file", help="where --with-clean logs (default: with the other logs)", metavar="FILE"),
    ], ("image", "id")),
    Command("pull", "fetch an image's layers into the store without creating an image", _REGISTRY_OPTS, ("image",)),
    Command("delete", "unmount and remove an image", [], ("id?",)),
    Command("stats", "disk usage of an image, as JSON", [], ("id",)),
    Command("list", "list images", [Opt("--json", "true", help="one JSON document with ids, paths and sizes")]),
    Command("clean", "remove layers no image uses and leftovers of interrupted commands",
            [Opt("--threshold-bytes", "int", help="only when the store holds more than N bytes", metavar="N")]),
    Command("capacity", "the store's configured size, as JSON"),
    Command("check", "verify every cached layer against its unpack-time record, and every image", [
        Opt("--repair", "true", help="remove what is damaged, fetch layers again, finish half-made images, remount"),
    ]),
    Command("generate-volume-size-metadata", "GrootFS's upgrade step; nothing to do: layer sizes are recorded "
            "when a layer is unpacked"),
    Command("enter", "run a command inside the store's user and mount namespace (default: $SHELL)", rest="cmd"),
    Command("run", "create (or reuse, with --name) an image and run a container from it with runc; "
            "the container shares the host's network", [
        Opt("--rm", "true", help="delete the image when the container exits"),
        Opt("--tty,-t", "true", dest="tty", help="give the container a terminal"),
        Opt("--name", help="image id (an existing image of that id is reused)", metavar="ID"),
        Opt("--env,-e", "append", dest="env", help="KEY=VALUE, or KEY for the host's value (repeatable)",
            metavar="K=V"),
        Opt("--workdir,-w", "value", dest="workdir", help="working directory in the container", metavar="DIR"),
        Opt("--runtime", help="runc (default) or crun, or a path", metavar="PATH"),
        *_REGISTRY_OPTS,
    ], ("image",), rest="cmd"),
    Command("bundle", "write an OCI runtime bundle (config.json) for an image, for runc", [], ("id", "dir")),
]}


def _config(args: Args):
    from . import config

    overrides: dict[str, Any] = {
        "store": args.store,
        "log_level": args.log_level,
        "log_file": args.log_file,
        "newuidmap_bin": args.newuidmap_bin,
        "newgidmap_bin": args.newgidmap_bin,
        "tardis_bin": args.tardis_bin,
        "metron_endpoint": args.metron_endpoint,
        "clean_log_file": getattr(args, "clean_log_file", None),
    }
    for name in ("disk_limit_size_bytes", "exclude_image_from_quota", "skip_layer_validation", "with_clean",
                 "without_mount"):
        overrides[name] = getattr(args, name, None)
    if getattr(args, "without_clean", None):
        if args.with_clean:
            raise UsageError("with-clean and without-clean cannot be used together")
        overrides["with_clean"] = False
    overrides["clean_threshold_bytes"] = getattr(args, "threshold_bytes", None)
    overrides["store_size_bytes"] = getattr(args, "store_size_bytes", None)
    overrides["registry_timeout_seconds"] = getattr(args, "registry_timeout", None)
    overrides["insecure_registries"] = getattr(args, "insecure_registry", None)
    return config.build(args.config, overrides)


def _print_json(doc: Any) -> None:
    from .fastjson import dumps

    sys.stdout.write(dumps(doc) + "\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like Ctrl-C (partial work removed), exit status 143."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import _signal  # builtin; the signal module would import enum

    _signal.signal(_signal.SIGTERM, _on_sigterm)
    try:
        name, args = parse(argv, GLOBAL_OPTS, COMMANDS)
        if name == "--version":
            print(f"rootless-groot {__version__}")
            return 0
        if name in ("-h", "--help") or (name or "").startswith("help:"):
            sys.stdout.write(help_text("rootless-groot", DESCRIPTION, GLOBAL_OPTS, COMMANDS,
                                       name[5:] if name.startswith("help:") else None))
            return 0
        cfg = _config(args)
        log.configure(cfg.log_level, cfg.log_file, args.command)
        if cfg.unknown_keys:
            log.info("config.unknown-keys-ignored", keys=list(cfg.unknown_keys), config=args.config)
        if log.enabled("debug"):
            log.debug("config", store=cfg.store, config_file=args.config, log_file=cfg.log_file,
                      metron_endpoint=cfg.metron_endpoint, euid=os.geteuid())
        image_id = getattr(args, "id", None)
        with log.Step(_STEPS.get(args.command, args.command), "info", **({"id": image_id} if image_id else {})):
            return HANDLERS[args.command](args, cfg) or 0
    except GrootError as e:
        log.error("command-failed", error=str(e), **({"hint": e.hint} if e.hint else {}))
        return _fail(str(e), e.exit_code, e.hint)
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            return _fail("terminated", 143)
        return _fail("interrupted", 130)
    except OSError as e:
        log.error("command-failed", error=repr(e))
        where = f": {e.filename}" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}", 1)
    except Exception as e:  # a bug: still one line on stdout; the traceback goes to the log
        import traceback

        log.error("internal-error", traceback=traceback.format_exc())
        sys.stderr.write(traceback.format_exc())
        print(f"internal error: {type(e).__name__}: {e}".replace("\n", " "), flush=True)
        return 1


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: freeing every module and object costs ~1.5 ms,
    a tenth of a warm command. What the teardown would still do for us is flush the standard
    streams (no threads, ``atexit`` handlers or unclosed files here; workers ``_exit`` too)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        code = code or 120  # what Python's own exit reports when flushing fails
    os._exit(code)


def _fail(message: str, code: int, hint: str | None = None) -> int:
    """The error as one line on stdout (Garden's contract); also on stderr when that is a terminal
    that does not show stdout already (``create ... > spec.json`` still shows it). A hint (advice
    beyond GrootFS's exact sentence) goes to a terminal's stderr only."""
    line = message.replace("\n", " ")
    print(line, flush=True)
    try:
        if os.isatty(2):
            out, err = os.fstat(1), os.fstat(2)
            if (out.st_dev, out.st_ino, out.st_rdev) != (err.st_dev, err.st_ino, err.st_rdev):
                sys.stderr.write(f"rootless-groot: error: {line}\n")
            if hint:
                sys.stderr.write(f"rootless-groot: hint: {hint}\n")
    except OSError:
        pass
    return code


def _open(cfg):
    from .store.context import StoreContext

    return StoreContext.open(cfg)


def cmd_init_store(args, cfg) -> int:
    from .mappings import default_mappings, parse_mappings
    from .store.context import init_store

    from .store.layout import Store

    if Store(cfg.store).exists():
        log.info("store-already-initialized", store=cfg.store)
    explicit = bool(args.uid_mapping or args.gid_mapping)
    if explicit:
        uids, gids = parse_mappings(args.uid_mapping or []), parse_mappings(args.gid_mapping or [])
    elif os.geteuid() == 0:
        uids, gids = (), ()
    else:
        uids, gids = default_mappings()
    if args.store_size_bytes is not None or cfg.store_size_bytes:
        from .quota import init_quota_store

        if os.geteuid() != 0:  # GrootFS's words; a quota store needs a mount and the helper's registration
            log.error("init-store.needs-root", hint="run init-store as root with the owner's --uid-mapping/--gid-mapping")
            raise StoreError(f"store {cfg.store} can only be initialized by Root user")

        size = args.store_size_bytes if args.store_size_bytes is not None else cfg.store_size_bytes
        meta = init_quota_store(cfg, size, uids, gids, explicit)
    else:
        meta = init_store(cfg, uids, gids, explicit)
    from .mappings import is_single_id

    if meta.rootless and is_single_id(meta.uid_mappings):
        log.warn("init-store.single-id", text="no subordinate ids for your user in /etc/subuid: files owned by "
                 "other users in images will belong to you (a single-ID mapping)")
    return 0


def _open_or_init(cfg):
    """Open the store, creating it with the default mappings on first use (as podman does).

    Only a workstation's first use: with a config file (Garden and other GrootFS users), or when
    the directory exists already (made by an operator), the store must come from init-store.
    """
    from .store.layout import Store

    if not Store(cfg.store).exists():
        if cfg.from_config_file or os.path.lexists(cfg.store):
            from .hints import store_problem

            usable = os.path.isdir(cfg.store) and os.access(cfg.store, os.W_OK | os.X_OK)
            raise StoreError((not usable and store_problem(cfg.store))
                             or "Store path is not initialized. Please run init-store.")
        from .mappings import default_mappings
        from .store.context import init_store

        uids, gids = default_mappings() if os.geteuid() != 0 else ((), ())
        init_store(cfg, uids, gids, explicit=False)
        ctx = _open(cfg)
        ctx.start_keeper()  # now, while this process is small: the keeper's fork copies its pages
        return ctx
    return _open(cfg)


def cmd_create(args, cfg) -> int:
    from .store.imageinfo import check_id
    from .store.images import runtime_spec, settle_image

    check_id(args.id)
    _start_registry_check(args, cfg)
    ctx = _open_or_init(cfg)
    if ctx.meta.rootless and not cfg.without_mount:
        from .garden import check_mount_visible

        check_mount_visible(ctx.store.root)
    ctx.check_writable()
    if settle_image(ctx, args.id) != "absent":  # a dead command's half-made image is removed
        raise GrootError(f"image for id `{args.id}` already exists")
    _print_json(runtime_spec(ctx, _create(args, cfg, ctx, args.id)))
    return 0


def _create(args, cfg, ctx, image_id: str):
    from .store.images import create_image, retry_remounts
    from .store.layers import ensure_layers
    from .store.locks import flocked

    limit = 0
    if cfg.disk_limit_size_bytes:
        from .quota import check_available, effective_limit

        limit = effective_limit(cfg.disk_limit_size_bytes)
        check_available(ctx)
    if cfg.with_clean:
        from .store.gc import clean

        with log.redirected(cfg.clean_log_file), log.Step("groot-cleaning", "info"):
            clean(ctx, cfg.clean_threshold_bytes)
    source = _image_source(args, cfg)
    try:
        with flocked(ctx.store.lock_path("gc"), exclusive=False):
            # A cached resolution waiting for the registry's confirmation: its layers are checked
            # while the registry answers (the HEAD's round trip, ~1 ms, mostly hidden).
            checks = _LayerChecks(ctx)
            cached = getattr(source, "cached", None)
            if cached is not None:
                checks.ahead(cached.layers)
            with log.Step("resolving-image", "info", image=args.image):
                image = source.resolve()
            if args.platform:
                from .sources.base import check_platform, parse_platform

                check_platform(image, parse_platform(args.platform), args.image)
            if limit and not cfg.exclude_image_from_quota and sum(l.size or 0 for l in image.layers) > limit:
                from .errors import QuotaError

                raise QuotaError("layers exceed disk quota")
            with log.Step("unpacking-layers", "info", layers=len(image.layers)):
                ensure_layers(ctx, source, image.layers,
                              max_layer_size=limit if limit and not cfg.exclude_image_from_quota else None,
                              progress=_show_progress(args))
            with log.Step("making-image", "info", mount=not cfg.without_mount, disk_limit=limit):
                retry_remounts(ctx)  # images a remount failed for (one listdir when there are none)
                checks.require(image.layers)  # a damaged cached layer must not make a wrong rootfs
                return create_image(ctx, image_id, [layer.chain_id for layer in image.layers], image.env,
                                    mount=not cfg.without_mount, quota=limit,
                                    exclude_image_from_quota=cfg.exclude_image_from_quota, config=image.config,
                                    source=args.image)
    finally:
        source.close()


class _LayerChecks:
    """Issue 9's directory check of each cached layer an image uses (store.integrity), which
    may run ahead of the resolution on the layers it will most likely return."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.done: dict[str, GrootError | None] = {}  # chain id -> None (intact) or its damage

    def ahead(self, layers) -> None:
        from .store.integrity import quick_check

        for layer in layers:
            try:
                quick_check(self.ctx, layer.chain_id, layer.name)
                self.done[layer.chain_id] = None
            except GrootError as e:  # raised by require() only if the resolved image uses it
                self.done[layer.chain_id] = e

    def require(self, layers) -> None:
        from .store.integrity import quick_check

        for layer in layers:
            if layer.chain_id not in self.done:
                quick_check(self.ctx, layer.chain_id, layer.name)
            elif self.done[layer.chain_id] is not None:
                raise self.done[layer.chain_id]


def _id_from_arg(store, arg: str) -> str | None:
    """GrootFS accepts an id or ``<store>/images/<id>``; None if the path is elsewhere."""
    if not arg.startswith("/"):
        return arg
    prefix = store.images + "/"
    if not arg.startswith(prefix) or "/" in arg[len(prefix):].rstrip("/"):
        return None
    return arg[len(prefix):].rstrip("/")


def cmd_delete(args, cfg) -> int:
    from .store.images import delete_image
    from .store.layout import Store

    if not args.id:
        raise UsageError("id was not specified")
    if not Store(cfg.store).exists():
        print(f"Image `{args.id}` not found. Skipping delete.")
        return 0
    ctx = _open(cfg)
    image_id = _id_from_arg(ctx.store, args.id)
    if image_id is None:
        print(f"path `{args.id}` is outside store path Skipping delete.")
        return 0
    try:
        delete_image(ctx, image_id)
    except NotFound:
        print(f"Image `{image_id}` not found. Skipping delete.")
        return 0
    print(f"Image {image_id} deleted")
    return 0


def cmd_stats(args, cfg) -> int:
    from .store.imageinfo import image_stats
    from .store.layout import Store

    if not Store(cfg.store).exists():  # GrootFS: an image of a missing store is a missing image
        log.error("no-store", store=cfg.store)
        image_id = _id_from_arg(Store(cfg.store), args.id)
        if image_id is None:
            raise NotFound(f"path `{args.id}` is outside store path")
        raise NotFound(f"Image `{image_id}` not found.")
    ctx = _open(cfg)
    image_id = _id_from_arg(ctx.store, args.id)
    if image_id is None:
        raise NotFound(f"path `{args.id}` is outside store path")
    _print_json(image_stats(ctx, image_id))
    return 0


def cmd_list(args, cfg) -> int:
    from .store.imageinfo import image_ids

    ctx = _open(cfg)
    ids = image_ids(ctx)
    if args.json:
        from .store.imageinfo import list_json

        _print_json({"images": list_json(ctx, ids)})
    elif not ids:
        print("Store empty")
    else:
        sys.stdout.write("".join(ctx.store.image_dir(i) + "\n" for i in ids))
    return 0


def cmd_clean(args, cfg) -> int:
    from .store.gc import clean
    from .store.layout import Store

    if not Store(cfg.store).exists():
        log.error("no-store", error=f"no store found at {cfg.store}")
        print(f"no store found at {cfg.store}")
        return 0
    if clean(_open(cfg), cfg.clean_threshold_bytes):
        print("clean completed")
    else:
        print("threshold not reached: skipping clean")
    return 0


def cmd_check(args, cfg) -> int:
    from .argv import Args
    from .store.check import check_store

    def reopen(image: str):
        return _image_source(Args({"image": image, "platform": None, "username": None, "password": None}), cfg)

    problems = check_store(_open(cfg), repair=args.repair, open_source=reopen)
    for line in problems:
        print(line)
    if problems:
        raise GrootError(f"check: {len(problems)} problem(s) {'left' if args.repair else 'found'}"
                         f"{'' if args.repair else ': `check --repair` fixes what it can'}")
    print("store is consistent")
    return 0


def cmd_capacity(args, cfg) -> int:
    _print_json({"capacity": cfg.store_size_bytes})
    return 0


def cmd_delete_store(args, cfg) -> int:
    from .store.recovery import delete_store

    delete_store(cfg, force=args.force)
    return 0


def cmd_enter(args, cfg) -> int:
    cmd = args.cmd
    if not cmd:
        cmd = [os.environ.get("SHELL") or "/bin/sh"]
    ctx = _open(cfg)
    ctx.enter()
    sys.stdout.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        from .errors import CommandNotFound

        if isinstance(e, FileNotFoundError) or ("/" not in cmd[0] and not _on_path(cmd[0])):
            raise CommandNotFound(f"{cmd[0]}: command not found") from None
        error = GrootError(f"cannot run `{cmd[0]}`: {e.strerror}")
        error.exit_code = 126  # found but not executable, as shells say
        raise error from None
    return 1


def _on_path(name: str) -> bool:
    return any(os.path.isfile(os.path.join(d or ".", name)) for d in os.environ.get("PATH", os.defpath).split(":"))


def _registry_options(args: Args, cfg) -> dict[str, Any]:
    """What a docker:// source needs from flags and config (ignored by other sources)."""
    return {
        "username": args.username,
        "password": args.password,
        "insecure_registries": cfg.insecure_registries,
        "registry_ca": getattr(args, "registry_ca", None),
        "mirrors": getattr(args, "registry_mirror", None),
        "store_root": cfg.store,
        "pull_policy": getattr(args, "pull_policy", None),
        "skip_layer_validation": getattr(cfg, "skip_layer_validation", False),
        "remote_layer_client_certificates_path": getattr(cfg, "remote_layer_client_certificates_path", None),
        "inactivity_timeout": cfg.registry_timeout_seconds,
    }


def _show_progress(args: Args) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _start_registry_check(args: Args, cfg) -> None:
    """Send the HEAD a cached docker:// resolution needs now: the registry answers while the
    store is opened and its cache read (``_image_source`` picks it up)."""
    from .refs import parse_ref
    from .sources import start_check

    try:
        args.pending_head = start_check(parse_ref(args.image), _registry_options(args, cfg))
    except GrootError:  # a bad reference: reported where it always was, after the store checks
        args.pending_head = None


def _image_source(args: Args, cfg):
    """The source of ``args.image``, with the platform and registry options of the flags."""
    from .refs import parse_ref
    from .sources import open_source
    from .sources.base import parse_platform

    platform = parse_platform(args.platform) if args.platform else None
    return open_source(parse_ref(args.image), platform, pending_head=getattr(args, "pending_head", None),
                       **_registry_options(args, cfg))


def cmd_pull(args, cfg) -> int:
    """Resolve an image and unpack its missing layers; prints the manifest digest."""
    from .store.layers import ensure_layers
    from .store.locks import flocked

    ctx = _open_or_init(cfg)
    source = _image_source(args, cfg)
    try:
        with flocked(ctx.store.lock_path("gc"), exclusive=False):
            image = source.resolve()
            ensure_layers(ctx, source, image.layers, progress=_show_progress(args))
    finally:
        source.close()
    print(image.manifest_digest or image.layers[-1].chain_id)
    return 0


def cmd_run(args, cfg) -> int:
    from .workstation import run

    return run(args, cfg, _open_or_init(cfg), _create)


def cmd_bundle(args, cfg) -> int:
    from .workstation import bundle

    return bundle(args, _open(cfg))


# The name of each command's log step (GrootFS's, where it has one).
_STEPS = {"create": "groot-creating", "delete": "groot-deleting", "stats": "groot-stats", "clean": "groot-cleaning",
          "list": "groot-listing", "init-store": "groot-init-store", "delete-store": "groot-deleting-store"}

HANDLERS = {
    "init-store": cmd_init_store,
    "delete-store": cmd_delete_store,
    "create": cmd_create,
    "delete": cmd_delete,
    "stats": cmd_stats,
    "list": cmd_list,
    "clean": cmd_clean,
    "capacity": cmd_capacity,
    "check": cmd_check,
    "generate-volume-size-metadata": lambda args, cfg: 0,
    "enter": cmd_enter,
    "pull": cmd_pull,
    "run": cmd_run,
    "bundle": cmd_bundle,
}
