"""Progress on a terminal while layers come in, as docker and podman show it: one line per
layer updated in place (bytes read and unpacked, then verifying, then done) and a total.

Only a command that has layers to fetch and a terminal on stderr (and no ``--quiet``) makes
a :class:`View`, which is the only thing that imports ``rich``. Layers unpacked in forked
workers report through a pipe (:class:`PipeReporter`, one short line per event, atomic
below PIPE_BUF); the parent, which owns the screen, reads it while it waits for them.
"""
from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from .sources.base import LayerDescriptor

REFRESH = 0.1  # seconds between byte updates of one layer


def short(layer: LayerDescriptor) -> str:
    return (layer.digest or layer.chain_id).split(":")[-1][:12]


class CountingReader:
    """Passes ``read`` through and reports how far the layer's stored bytes have been read."""

    def __init__(self, raw: BinaryIO, reporter: Any, key: str):
        self._raw = raw
        self._reporter = reporter
        self._key = key
        self._offset = 0
        self._last = 0.0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._offset += len(data)
        now = time.monotonic()
        if now - self._last >= REFRESH or not data:
            self._last = now
            self._reporter.event(self._key, "b", str(self._offset))
        return data

    def close(self) -> None:
        self._raw.close()


class Reporter:
    """What the layer cache tells about each layer; sends to a View in this process (which
    then also shows what the workers reported meanwhile)."""

    def __init__(self, view: Any):
        self.view = view

    def event(self, key: str, kind: str, value: str = "") -> None:
        self.view.apply(key, kind, value)
        self.view.poll(0)

    def wrap(self, layer: LayerDescriptor, raw: BinaryIO) -> CountingReader:
        total = layer.size
        if not total:  # a local tarball, or a Garden layout's size-0 descriptor: the file's size
            try:
                total = os.fstat(raw.fileno()).st_size
            except (AttributeError, OSError, ValueError):
                total = 0
        self.event(short(layer), "t", str(total))
        import io

        # a file (OCI layout, tarball) is read and unpacked; a registry's stream is downloaded too
        self.event(short(layer), "p", "Unpacking" if isinstance(raw, io.FileIO) else "Downloading")
        return CountingReader(raw, self, short(layer))

    def verifying(self, layer: LayerDescriptor) -> None:
        self.event(short(layer), "p", "Verifying")

    def done(self, layer: LayerDescriptor) -> None:
        self.event(short(layer), "d")


class PipeReporter(Reporter):
    """In a forked worker: each event is one line on the pipe to the parent's View."""

    def __init__(self, fd: int):
        self.fd = fd

    def event(self, key: str, kind: str, value: str = "") -> None:
        try:
            os.write(self.fd, f"{key} {kind} {value}\n".encode()[:512])
        except OSError:
            pass


class View:
    """The screen: rich's Progress on stderr, refreshed by us (no thread: the layer cache forks)."""

    def __init__(self, layers: list[LayerDescriptor]):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.progress = Progress(TextColumn("{task.fields[name]}"), TextColumn("{task.description:<11}"),
                                 BarColumn(bar_width=30), DownloadColumn(), TransferSpeedColumn(),
                                 console=Console(stderr=True), auto_refresh=False, transient=False)
        self.tasks: dict[str, Any] = {}
        self.sizes: dict[str, int] = {}
        self.offsets: dict[str, int] = {}
        self.finished: set[str] = set()
        for layer in layers:
            key = short(layer)
            self.sizes[key] = layer.size or 0
            self.offsets[key] = 0
            self.tasks[key] = self.progress.add_task("Waiting", name=key, total=layer.size or None)
        self.count = len(layers)
        self.total = self.progress.add_task(self._total_text(), name="total".ljust(12),
                                            total=sum(self.sizes.values()) or None)
        self.buffer = b""
        self.pipe_r: int | None = None
        self.pipe_w: int | None = None
        self.last = 0.0
        self.progress.start()
        self.progress.refresh()

    def _total_text(self) -> str:
        return f"{len(self.finished)}/{self.count} layers"

    def apply(self, key: str, kind: str, value: str) -> None:
        task = self.tasks.get(key)
        if task is None:
            return
        if kind == "t":
            self.sizes[key] = int(value)
            self.progress.update(task, total=int(value) or None)
            self.progress.update(self.total, total=sum(self.sizes.values()) or None)
        elif kind == "b":
            self.offsets[key] = int(value)
            self.progress.update(task, completed=int(value))
        elif kind == "p":
            self.progress.update(task, description=value)
        elif kind == "d":
            self.finished.add(key)
            self.offsets[key] = self.sizes[key]
            self.progress.update(task, description="Done", completed=self.sizes[key], total=self.sizes[key] or 1)
        self.progress.update(self.total, completed=sum(self.offsets.values()), description=self._total_text())
        now = time.monotonic()
        if kind in ("d", "p") or now - self.last >= REFRESH:
            self.last = now
            self.progress.refresh()

    def reporter(self) -> Reporter:
        return Reporter(self)

    def open_pipe(self) -> int:
        """A pipe for forked workers' :class:`PipeReporter`; its write end."""
        self.pipe_r, self.pipe_w = os.pipe()
        return self.pipe_w

    def poll(self, timeout: float) -> None:
        """Show what the workers wrote, waiting up to ``timeout`` for something to come."""
        if self.pipe_r is None:
            return
        import select

        if select.select([self.pipe_r], [], [], timeout)[0]:
            self.pump(self.pipe_r)

    def close_pipe(self) -> None:
        """The workers are gone: read the rest, then close."""
        if self.pipe_r is None:
            return
        os.close(self.pipe_w)
        while self.pump(self.pipe_r):
            pass
        os.close(self.pipe_r)
        self.pipe_r = self.pipe_w = None

    def pump(self, fd: int) -> int:
        """Read what the workers wrote so far and show it; the number of bytes read."""
        data = os.read(fd, 65536)
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            key, kind, value = (line.decode(errors="replace").split(" ", 2) + ["", ""])[:3]
            self.apply(key, kind, value)
        return len(data)

    def close(self) -> None:
        self.progress.refresh()
        self.progress.stop()
