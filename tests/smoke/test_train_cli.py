"""A seconds-long ``smoe train`` (cloning, two PPO updates, validation, export) and its
refusals of evaluation data and bad input."""

from __future__ import annotations

import torch
import yaml

from smoelib.cli import main
from smoelib.policy.base import get_decider
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.topology import build_dag

SMALL = {"name": "p", "slo_ms": 50, "stages": [{"id": "a"}, {"id": "m", "experts": 3},
                                               {"id": "z"}]}


def test_train_writes_resumable_checkpoints_a_log_and_an_export(tmp_path, capsys):
    pipeline = tmp_path / "small.yml"
    pipeline.write_text(yaml.safe_dump(SMALL))
    out, export = tmp_path / "run", tmp_path / "policy.pt"
    args = ["train", "--out", str(out), "--pipelines", str(pipeline), "--traces", "poisson",
            "--bc-rounds", "1", "--bc-episodes", "1", "--updates", "2", "--envs", "2",
            "--episode", "20", "--validation-episode", "20", "--validate-every", "1",
            "--no-progress"]
    assert main([*args, "--export", str(export)]) == 0
    assert "finished at update 3/3" in capsys.readouterr().out
    data = torch.load(out / "checkpoint.pt", weights_only=True)
    assert data["config"]["architecture"] == "smoe" and data["optimizer"] is not None
    assert data["training"]["state"]["update"] == 3
    header, *rows = (out / "log.csv").read_text().splitlines()
    assert "losses/policy" in header and "charts/lagrange" in header and len(rows) == 3
    small = torch.load(export, weights_only=True)
    assert small["optimizer"] is None and export.stat().st_size < 1_000_000
    # the export is a policy `smoe evaluate` can run
    dag = build_dag(str(pipeline))
    settings = load_settings({"policy": {"checkpoint": str(export)}})
    decider = get_decider("smoe", dag=dag, settings=settings)
    env = SimEnv(dag, settings, trace="poisson", duration_s=10)
    decider.reset(1)
    assert set(decider.decide(env.reset(1)).experts) == set(dag.experts)
    # resuming a finished run with more updates continues it
    assert main([*args[:-1], "--updates", "3", "--resume", "--no-progress"]) == 0
    assert "finished at update 4/4" in capsys.readouterr().out


def test_train_refuses_evaluation_data_and_bad_input(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path), "--traces", "conv-eval,poisson",
                 "--seeds", "0:1001", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "conv-eval" in err and "--seeds" in err and "evaluation" in err
    assert main(["train", "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--envs", "0", "--seeds", "x",
                 "--no-progress"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--envs", "0", "--no-progress"]) == 2
    assert "--envs" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--shield-penalty", "-1",
                 "--no-progress"]) == 2
    assert "--shield-penalty: must be >= 0" in capsys.readouterr().err
