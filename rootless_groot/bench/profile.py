"""Where the time of a warm command goes, measured from inside (issue 12: every target missed is
explained with a profile).

Each command runs through a bench-only runner started as the installed script starts:
``python -IS``, the venv's ``site-packages`` appended to the path, the import bundle. A first
run of each command records which modules it imports; in the timed runs the runner imports
those first (``imports``), wraps the functions named in ``PHASES`` with timers, and runs the
command (``main``). ``interpreter start + exit`` is the wall time seen from outside minus what
the runner saw from its first line to its last: what ``python -I -S -c pass`` costs, and the
runner's own ``-c`` compile. What ``main`` spent outside the named phases is ``other``
(argument parsing, config, logging, the output).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from .util import StepFailed, run

# (module, function, label) per command; a module is wrapped only when the command imports it.
PHASES = {
    "create": [
        ("rootless_groot.cli", "_start_registry_check", "registry HEAD sent (connect, request)"),
        ("rootless_groot.cli", "_open_or_init", "store opened (store.json)"),
        ("rootless_groot.store.images", "settle_image", "id checked (images/<id>)"),
        ("rootless_groot.cli", "_image_source", "image resolved (HEAD answer, cached manifest)"),
        ("rootless_groot.store.layers", "ensure_layers", "layers present"),
        ("rootless_groot.store.integrity", "quick_check", "directory check of each layer (issue 9)"),
        ("rootless_groot.namespace", "join", "store namespace joined (setns)"),
        ("rootless_groot.store.images", "mount_image", "overlay mounted"),
        ("rootless_groot.store.images", "create_image", "image made (minus join and mount)"),
    ],
    "stats": [
        ("rootless_groot.cli", "_open", "store opened (store.json)"),
        ("rootless_groot.store.imageinfo", "image_stats", "image.json read, stats made"),
    ],
    "list": [
        ("rootless_groot.cli", "_open", "store opened (store.json)"),
        ("rootless_groot.store.imageinfo", "image_ids", "images/ listed"),
    ],
    "delete": [
        ("rootless_groot.store.images", "delete_image", "image removed"),
    ],
}
NESTED = {"create_image": ("join", "mount_image")}  # their time is reported on its own

RUNNER = r"""
import time
T0 = time.perf_counter()
import sys
sys.path.append(sys.argv.pop(1))
out_path, modules_path, phases = sys.argv.pop(1), sys.argv.pop(1), sys.argv.pop(1)
spans = {}
if modules_path != "-":  # timed run: import what the command imports, then wrap the phases
    with open(modules_path) as f:
        for name in f.read().split():
            __import__(name)
T1 = time.perf_counter()
def wrap(module, name):
    function = getattr(module, name)
    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spans[name] = spans.get(name, 0.0) + time.perf_counter() - t
    setattr(module, name, timed)
for phase in phases.split(","):
    module_name, _, function_name = phase.partition(":")
    if module_name in sys.modules:
        wrap(sys.modules[module_name], function_name)
from rootless_groot.cli import exit_now, main
T2 = time.perf_counter()
rc = main(sys.argv[1:])
T3 = time.perf_counter()
with open(out_path, "w") as f:  # plain text: importing json would cost more than a warm command's work
    if modules_path == "-":
        f.write("\n".join(m for m in sys.modules if m.startswith("rootless_groot")))
    else:
        times = {"imports": T1 - T0, "wrap": T2 - T1, "main": T3 - T2, "inside": T3 - T0, **spans}
        f.write("".join(f"{k} {v!r}\n" for k, v in times.items()))
exit_now(rc)
"""


def _site_packages(cli: str) -> str:
    prefix = Path(cli).resolve().parent.parent
    return str(prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages")


class Profiler:
    """Runs commands of one store through the runner; keeps per-phase samples (seconds)."""

    def __init__(self, cli: str, store: Path, work: Path, env: dict):
        self.python = str(Path(cli).parent / "python")
        self.site = _site_packages(cli)
        self.store, self.work, self.env = store, work, env
        self.modules: dict[str, str] = {}
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.not_called = {"create_nomount": ("join", "mount_image")}  # phases a command skips

    def _argv(self, kind: str, out: Path, modules: str, args: list[str]) -> list[str]:
        phases = ",".join(f"{m}:{f}" for m, f, _ in PHASES[kind])
        return [self.python, "-I", "-S", "-c", RUNNER, self.site, str(out), modules, phases,
                "--store", str(self.store), *args]

    def run(self, name: str, kind: str, args: list[str], before=None, after=None) -> None:
        """One timed run of ``args`` (``before``/``after`` prepare and clean up, untimed); the
        first run of ``name`` is preceded by one that finds the modules it imports."""
        out = self.work / f"profile-{os.getpid()}.txt"
        if name not in self.modules:
            before and before()
            run(self._argv(kind, out, "-", args), env=self.env)
            after and after()
            self.modules[name] = str(self.work / f"profile-modules-{name}.txt")
            os.replace(out, self.modules[name])
        before and before()
        t = time.perf_counter()
        run(self._argv(kind, out, self.modules[name], args), env=self.env)
        wall = time.perf_counter() - t
        after and after()
        with open(out) as f:
            doc = {k: float(v) for k, v in (line.split() for line in f)}
        spans = {k: v for k, v in doc.items() if k not in ("imports", "wrap", "main", "inside")}
        for outer, inner in NESTED.items():
            if outer in spans:
                spans[outer] -= sum(spans.get(i, 0.0) for i in inner)
        row = self.samples.setdefault(name, {})
        values = {"wall": wall, "start": wall - doc["inside"], "imports": doc["imports"] + doc["wrap"],
                  "other": doc["main"] - sum(spans.values()), **spans}
        for key, v in values.items():
            row.setdefault(key, []).append(v)
        expected = {f for _, f, _ in PHASES[kind]} - set(self.not_called.get(name, ()))
        if not expected <= set(spans):
            raise StepFailed(f"profile of {name}: no time recorded for {', '.join(sorted(expected - set(spans)))} "
                             "(renamed, or no longer called?)")

    def table(self, columns: list[tuple[str, str]]) -> str:
        """The medians in ms: a row per phase, a column per (sample name, title)."""
        rows: dict[str, list[str]] = {"wall time (from outside)": ["wall"], "interpreter start + exit": ["start"],
                                      "imports (package, bundle, the command's modules)": ["imports"]}
        for kind in PHASES.values():
            for _, function, label in kind:
                keys = rows.setdefault(label, [])
                if function not in keys:
                    keys.append(function)
        rows["other (argv, config, log, output)"] = ["other"]
        width = max(map(len, rows)) + 2
        head = "".join(f"{title:>11}" for _, title in columns)
        lines = [f"  {'phase (ms, medians)':{width}}{head}"]
        for label, keys in rows.items():
            cells = []
            for name, _ in columns:
                row = self.samples.get(name, {})
                values = next((row[k] for k in keys if k in row), None)
                cells.append(f"{statistics.median(values) * 1000:>11.2f}" if values else f"{'':>11}")
            if any(c.strip() for c in cells):
                lines.append(f"  {label:{width}}{''.join(cells)}")
        n = min((len(v.get("wall", [])) for v in self.samples.values()), default=0)
        lines.append(f"  ({n} runs of each, interleaved)")
        return "\n".join(lines)
