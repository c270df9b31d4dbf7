"""`smoe profile` on this machine: its block, written into a pipeline, drives a simulation."""

from __future__ import annotations

from pathlib import Path

import yaml

from smoelib.cli import main
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.summary import summarise
from smoelib.topology import build_dag


def test_a_measured_profile_drives_a_simulation(tmp_path, capsys):
    out = tmp_path / "profile.yml"
    code = main(["profile", "--d-model", "256", "--d-ff", "1024", "--tokens", "1,8,64",
                 "--repeats", "3", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "fit: max(" in text and "handler (loopback HTTP" in text
    block = yaml.safe_load(out.read_text())
    assert block["profile"]["tokens"] == [1, 8, 64] and len(block["profile"]["ms"]) == 3
    assert block["handler"]["call_ms"] > 0
    pipeline = yaml.safe_load(Path("examples/pipelines/bert-moe.yml").read_text())
    pipeline["defaults"]["expert"].update(block)
    dag = build_dag(pipeline)
    spec = dag.spec(dag.experts[0])
    assert spec.profile_kind == "curve" and spec.handler_ms == block["handler"]["call_ms"]
    env = SimEnv(dag, load_settings(None), trace="conv-train", duration_s=15.0, rate_scale=1.0)
    env.reset(seed=1)
    while not env.step(None).done:
        pass
    s = summarise(env)
    assert s.requests > 0 and s.calls > 0 and s.ttft_p50_ms > 0


def test_profile_refuses_bad_flags(capsys):
    assert main(["profile", "--tokens", "8", "--no-handler"]) == 2
    assert "--tokens: needs at least two batch sizes" in capsys.readouterr().err
