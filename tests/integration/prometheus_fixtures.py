"""A real Prometheus (Debian's package) scraping a paced simulator's exporter.

:class:`PacedSim` runs ``smoe simulate --exporter-port`` in a subprocess, paced.
:class:`PrometheusProcess` starts ``prometheus`` on a free loopback port with a config that
scrapes it every second.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

__all__ = ["PacedSim", "PrometheusProcess", "free_port", "prometheus_binary"]

READY_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str:
    """The ``prometheus`` executable; missing fails under CI (``make install`` installs it)
    and skips elsewhere."""
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed: `make install` installs Debian's package")
        pytest.skip("prometheus is not installed (Debian package 'prometheus')")
    return path


class PacedSim:
    """``smoe simulate --exporter-port``, as a user runs it beside Prometheus: the simulator
    paced at ``speed`` simulated seconds per real second, serving ``/metrics``."""

    def __init__(self, pipeline: Path, config: Path, *, seed: int = 3, speed: float = 25.0,
                 trace: str = "poisson"):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smoelib.cli", "simulate", "--pipeline", str(pipeline),
             "--config", str(config), "--trace", trace, "--policy", "static",
             "--duration", "3600", "--seed", str(seed), "--exporter-port", str(self.port),
             "--speed", str(speed), "--no-progress"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smoe simulate exited: {self.proc.stderr.read().decode()}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("smoe simulate did not serve /metrics")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def vanish(self) -> None:
        """The exporter disappears (the process is killed)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.vanish()
        self.proc.stderr.close()


class PrometheusProcess:
    """``prometheus`` on 127.0.0.1, scraping ``targets`` every second."""

    def __init__(self, targets: list[str], *, port: int | None = None):
        self.binary = prometheus_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="smoe-prom-"))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: smoe-sim\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n")
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.proc.stderr.read().decode()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready")

    def wait_for(self, promql: str, *, timeout_s: float = 30.0) -> None:
        """Until ``promql`` returns a series (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=2)
            if r.ok and r.json()["data"]["result"]:
                return
            time.sleep(0.5)
        raise AssertionError(f"no data for {promql} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(timeout=15)
            self.proc.stderr.close()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
