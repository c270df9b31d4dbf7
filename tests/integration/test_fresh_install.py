"""``pip install .`` gives a working product, at the lowest versions ``pyproject.toml`` allows.

The wheel is built from this checkout and installed into an empty virtualenv: the CPU torch
wheel first (as the Makefile installs it; torch's lower bound is not checked), then every other
run-time dependency and the test tools resolved at their lowest allowed versions (uv's
``--resolution lowest-direct``), then the wheel itself. In that environment ``smoe serve
--scaler-only`` answers KEDA over gRPC, and the unit and contract tests pass against the
installed package (run from a copy of the repository without its ``smoelib/`` source; the
``heavy`` ones, which simulate minutes of traffic and test no dependency the others do not,
run in the main pass only).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import pytest

from smoelib.keda_proto import externalscaler_pb2 as pb
from smoelib.keda_proto.externalscaler_pb2_grpc import ExternalScalerStub

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"  # the Makefile's CPU wheel


def run(*args: str, cwd: Path | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args[:6])} ...\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc.stdout


def requirements() -> list[str]:
    """Every run-time dependency but torch, the plots extra and the test tools."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [d for d in project["dependencies"] if not d.startswith("torch")]
    extras = project["optional-dependencies"]
    tools = [d for d in extras["dev"] if not d.startswith(("smoe[", "uv"))]
    return deps + extras["plots"] + tools


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("fresh")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
        str(ROOT))
    (wheel,) = (work / "dist").glob("smoe-*.whl")
    venv = work / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    run(python, "-m", "pip", "install", "-q", TORCH)
    reqs = work / "requirements.txt"
    reqs.write_text("\n".join(requirements()) + "\n")
    run(sys.executable, "-m", "uv", "pip", "install", "--python", python,
        "--resolution", "lowest-direct", "-r", str(reqs))
    run(sys.executable, "-m", "uv", "pip", "install", "--python", python, "--no-deps",
        str(wheel))
    copy = work / "checkout"
    files = run("git", "ls-files", cwd=ROOT).splitlines()
    for name in files:
        if name.startswith("smoelib/"):
            continue
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    return venv, copy


def test_the_wheel_at_the_lowest_bounds_serves_keda_and_passes_the_unit_tests(installed):
    venv, copy = installed
    python = str(venv / "bin" / "python")
    where = run(python, "-c", "import smoelib, sys; print(smoelib.__file__)", cwd=copy)
    assert str(venv) in where  # the wheel, not a checkout
    requires = run(python, "-c", "from importlib.metadata import requires; "
                   "print('\\n'.join(r for r in requires('smoe') if 'extra ==' not in r))")
    assert "grpcio-tools" not in requires and "matplotlib" not in requires  # extras only
    proc = subprocess.Popen(
        [str(venv / "bin" / "smoe"), "serve", "--scaler-only", "--pipeline",
         str(copy / "examples" / "pipelines" / "bert-moe.yml"), "--host", "127.0.0.1",
         "--grpc-port", "0", "--metrics-port", "0"], cwd=copy, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()
        match = re.search(r"scaler on 127\.0\.0\.1:(\d+)", banner)
        assert match, banner + proc.stderr.read()
        ref = pb.ScaledObjectRef(name="so", namespace="openfaas-fn",
                                 scalerMetadata={"pipeline": "bert-moe", "expert": "moe1/e0"})
        with grpc.insecure_channel(f"127.0.0.1:{match[1]}") as channel:
            spec = ExternalScalerStub(channel).GetMetricSpec(ref, timeout=10)
        assert spec.metricSpecs[0].metricName == "bert-moe-moe1-e0"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()
        proc.stderr.close()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    tests = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                            "not heavy", "tests/unit", "tests/contract"], cwd=copy,
                           capture_output=True,
                           text=True, timeout=900, env=env)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
