"""Timing, process and cleanup helpers shared by the bench modules."""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 600


class StepFailed(RuntimeError):
    pass


def base_env(home: Path, **extra) -> dict[str, str]:
    """A small, explicit environment: no PYTHONPATH, no pyenv shims on PATH."""
    env = {"PATH": USER_PATH, "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(home / "tmp")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(argv, *, env=None, timeout=DEFAULT_TIMEOUT, check=True, cwd=None, quiet=True) -> subprocess.CompletedProcess:
    """Run ``argv``, capture output; raise StepFailed with the tail of the output on failure."""
    try:
        p = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as e:
        raise StepFailed(f"{argv[0]}: timed out after {timeout}s") from e
    if check and p.returncode != 0:
        tail = (p.stdout + p.stderr).decode(errors="replace").strip().splitlines()[-3:]
        raise StepFailed(f"{' '.join(map(str, argv[:3]))}… exit {p.returncode}: {' | '.join(tail)}")
    return p


def timed(argv, **kw) -> float:
    """Wall time of one run of ``argv`` (spawn + wait), in seconds."""
    t = time.perf_counter()
    run(argv, **kw)
    return time.perf_counter() - t


def timed_shell(script: str, **kw) -> float:
    return timed(["/bin/sh", "-c", script], **kw)


@dataclass
class Sample:
    """Samples of one measurement (seconds, or another unit)."""

    values: list[float] = field(default_factory=list)
    error: str | None = None
    unit: str = "s"

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def to_json(self):
        return {"values": self.values, "median": self.median, "error": self.error, "unit": self.unit}


def measure(fn, reps: int, *, setup=None, teardown=None, unit="s") -> Sample:
    """Call ``setup(i)``, ``fn(i)`` (returns a number, or None: its wall time counts),
    ``teardown(i)`` ``reps`` times; the first failure ends the sample with its message."""
    s = Sample(unit=unit)
    for i in range(reps):
        try:
            if setup:
                setup(i)
            t = time.perf_counter()
            v = fn(i)
            s.values.append(time.perf_counter() - t if v is None else v)
        except Exception as e:  # noqa: BLE001 - recorded and reported in the table
            s.error = str(e)[:300] or type(e).__name__
            break
        finally:
            if teardown:
                try:
                    teardown(i)
                except Exception as e:  # noqa: BLE001
                    s.error = s.error or f"cleanup: {e}"[:300]
    return s


def kill_pidfile(path: Path) -> None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def rm_tree(path: Path) -> None:
    """rm -rf for trees with read-only dirs in them (umoci rootless bundles)."""
    if not os.path.lexists(path):
        return
    subprocess.run(["chmod", "-R", "u+rwX", str(path)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, default=lambda o: o.to_json() if hasattr(o, "to_json") else str(o)))
