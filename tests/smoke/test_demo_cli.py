"""`smoe demo`, seconds long: the embedded default end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def smoe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smoelib.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_demo_runs_to_its_comparison():
    proc = smoe("demo", "--duration", "45", "--policy", "queueing", "--baseline", "static")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("smoe demo: gpt2-moe (decoder, 72 experts, SLO TTFT 100 ms, TPOT "
                          "50 ms at 99%)")
    assert "TPOT P95 ms" in out and "goodput" in out
    lifts = re.search(r"shield lifts +(\d\.\d{3}) +(\d\.\d{3})", out)  # both under production
    assert lifts and all(0.0 <= float(x) <= 1.0 for x in lifts.groups())
    assert "replicas reach the cluster through the KEDA external scaler over gRPC" in out
    assert "cost of queueing is" in out and "x static" in out
    assert re.search(r"60 s windows whose attainment fell below 0\.99: \d+% for queueing, "
                     r"\d+% for static", out)
    # every request finishes in the drain: no percentile is infinite for want of an ending
    p99 = re.search(r"TPOT P99 ms +(\S+) +(\S+)", out)
    assert p99 and "inf" not in p99.groups(), p99
    assert "Traceback" not in proc.stderr


def test_demo_refuses_a_missing_pipeline(tmp_path):
    proc = smoe("demo", "--pipeline", str(tmp_path / "nope.yml"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope.yml'}: --pipeline: no such file " \
                                  "(run from the repository root, or pass --pipeline)"
