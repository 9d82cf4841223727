"""Debian's ``docker-registry`` on a free 127.0.0.1 port, filled with ``skopeo copy``."""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from .util import StepFailed, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ref(self, name: str) -> str:
        """``host:port/bench/NAME:latest`` (no transport)."""
        return f"{self.host}/bench/{name}:latest"

    def start(self) -> "Registry":
        if not shutil.which("docker-registry"):
            raise StepFailed("docker-registry not installed (apt-get install docker-registry)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}},
            "http": {"addr": self.host, "secret": uuid.uuid4().hex},
        }
        path = self.workdir / "config.yml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        logf = open(self.workdir / "registry.log", "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(path)], stdout=logf, stderr=logf,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StepFailed(f"docker-registry exited: {(self.workdir / 'registry.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise StepFailed("docker-registry did not listen within 20 s")

    def push(self, layout: Path, name: str, env: dict) -> None:
        run(["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
             f"oci:{layout}:latest", f"docker://{self.ref(name)}"], env=env, timeout=600)

    def log_offset(self) -> int:
        return (self.workdir / "registry.log").stat().st_size

    def requests_since(self, offset: int) -> list[str]:
        """``METHOD /path`` of each request logged after ``offset`` (the access log)."""
        time.sleep(0.3)  # the access log is written after the response
        with open(self.workdir / "registry.log", "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        return [m.group(1) for m in re.finditer(r'"((?:GET|HEAD|POST|PUT|PATCH|DELETE) /v2/\S*) HTTP/', text)]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
