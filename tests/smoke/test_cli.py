"""Seconds-long runs of the `smoe` command as a user types it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = sorted((ROOT / "examples" / "pipelines").glob("*.yml"))


def smoe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smoelib.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_version_and_help():
    from smoelib import __version__

    assert smoe("--version").stdout.strip() == f"smoe {__version__}"
    out = smoe("--help")
    assert out.returncode == 0 and "validate" in out.stdout


@pytest.mark.parametrize("pipeline", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_validate_every_example(pipeline):
    proc = smoe("validate", str(pipeline), "--config", str(ROOT / "examples" / "config.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pipeline ")
    assert proc.stderr == ""


def test_validate_reports_a_bad_config_too(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("control:\n  interval_s: -1\n")
    proc = smoe("validate", str(PIPELINES[0]), "--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {config}:2: control.interval_s: must be > 0, "
                                        "got -1"]


def test_examples_cover_the_issue_list():
    assert {p.stem for p in PIPELINES} >= {"bert-moe", "gpt2-moe", "bert2bert-moe",
                                           "deepseek-v3"}


@pytest.mark.parametrize("args", [["--help"],
                                  ["validate", "--pipeline", "examples/pipelines/bert-moe.yml"],
                                  ["manifests", "--pipeline", "examples/pipelines/bert-moe.yml"]],
                         ids=["help", "validate", "manifests"])
def test_light_commands_import_neither_torch_nor_the_simulator(args):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "smoelib.cli", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" not in imported and "smoelib.sim" not in imported
    assert not any(m.startswith(("torch.", "smoelib.sim.", "smoelib.policy.")) for m in imported)


def test_help_texts_show_no_restructuredtext_markup():
    for command in ("simulate", "evaluate", "serve", "plan", "train", "demo", "manifests"):
        text = smoe(command, "--help").stdout
        assert "``" not in text and ":class:" not in text and ":func:" not in text, command


def test_validate_and_manifests_take_the_pipeline_as_a_flag_or_positionally():
    flag = smoe("manifests", "--pipeline", str(PIPELINES[0]))
    positional = smoe("manifests", str(PIPELINES[0]))
    assert flag.returncode == positional.returncode == 0 and flag.stdout == positional.stdout
    neither = smoe("validate")
    assert neither.returncode == 2 and neither.stderr.strip().splitlines() == [
        "error: smoe validate: --pipeline: give the pipeline.yml once: --pipeline PIPELINE (or "
        "as the positional argument)"]
