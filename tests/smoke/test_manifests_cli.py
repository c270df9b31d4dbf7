"""``smoe manifests`` as a user runs it: files plus a kustomization that ``kubectl kustomize``
renders into valid ScaledObjects, or one YAML stream on stdout; bad input exits 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BERT = ROOT / "examples" / "pipelines" / "bert-moe.yml"
CRD = ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml"  # vendored: tests/schemas


def smoe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smoelib.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def validator() -> jsonschema.Draft202012Validator:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return jsonschema.Draft202012Validator(version["schema"]["openAPIV3Schema"])


@pytest.mark.skipif(shutil.which("kubectl") is None and not os.environ.get("CI"),
                    reason="needs kubectl (under CI a missing kubectl fails)")
def test_out_dir_renders_72_valid_scaled_objects(tmp_path):
    out = tmp_path / "so"
    proc = smoe("manifests", str(BERT), "--config", str(ROOT / "examples" / "config.yaml"),
                "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "72 ScaledObjects" in proc.stderr
    rendered = subprocess.run(["kubectl", "kustomize", str(out)], capture_output=True,
                              text=True, timeout=60, check=False)
    assert rendered.returncode == 0, rendered.stderr
    objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert len(objects) == 72 and {o["kind"] for o in objects} == {"ScaledObject"}
    check = validator()
    for obj in objects:
        check.validate(obj)


def test_stdout_is_one_yaml_stream_of_scaled_objects():
    proc = smoe("manifests", str(BERT))
    assert proc.returncode == 0, proc.stderr
    objects = list(yaml.safe_load_all(proc.stdout))
    assert len(objects) == 72
    assert {o["spec"]["triggers"][0]["metadata"]["pipeline"] for o in objects} == {"bert-moe"}


def test_bad_pipeline_exits_2_with_one_line_per_problem(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: Bad_Name\nslo_ms: 0\nstages: []\n")
    proc = smoe("manifests", str(bad), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= 2 and all(line.startswith("error: ") for line in lines)
    assert not (tmp_path / "out").exists()
