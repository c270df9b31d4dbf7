"""A seconds-long run of ``smoe simulate`` and its bad-input path."""

from __future__ import annotations

import math

from smoelib.cli import main


def test_simulate_prints_the_summary_and_writes_the_series(tmp_path, capsys):
    code = main(["simulate", "--pipeline", "examples/pipelines/bert-moe.yml", "--trace",
                 "conv-train", "--policy", "static", "--duration", "60", "--seed", "1",
                 "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for word in ("requests", "dropped", "P95", "SLO", "window violation rate", "cost",
                 "cold starts", "429s", "rollouts"):
        assert word in out
    assert (tmp_path / "windows.csv").read_text().startswith("t_s,requests")
    assert (tmp_path / "windows.png").stat().st_size > 1000


def test_simulate_bad_trace_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00.0,-1,2\n")
    code = main(["simulate", "--pipeline", "examples/pipelines/bert-moe.yml", "--trace",
                 str(bad), "--duration", "10", "--no-progress"])
    assert code == 2
    assert "row 1" in capsys.readouterr().err


def test_the_bundled_policy_replaces_no_more_pods_than_the_rollout_budget(capsys, tmp_path):
    """smoe under its production profile on a bursty trace: the slow-knob rollouts it may start
    are rationed to guards.rollout_budget_per_min pods per minute (4 x 10 min here); under the
    physical profile the same policy rolls every expert it reconfigures at once."""
    import re

    cold = tmp_path / "cold.yaml"  # from the pipeline defaults: the reconfiguration to ration
    cold.write_text("simulator: {warm_start: false}\n")

    def pods(*extra):
        code = main(["simulate", "--pipeline", "examples/pipelines/bert-moe.yml", "--trace",
                     "bursty", "--policy", "smoe", "--duration", "600", "--seed", "3",
                     "--rate-scale", "1", "--config", str(cold), "--no-progress", *extra])
        out = capsys.readouterr().out
        assert code == 0
        return out, int(re.search(r"pods replaced (\d+)", out).group(1))

    out, replaced = pods()
    assert "(guards production)" in out
    assert "the rollout budget allows 4 x 10 min = 40" in out
    assert replaced <= 40
    out, unbudgeted = pods("--guards", "physical")
    assert "(guards physical)" in out and unbudgeted > replaced


def test_simulate_runs_every_policy_as_evaluate_does(capsys):
    """The hindsight policies read the true load ahead, floor reports its own account of the
    cost and elasticmoe runs the simulator under its own overrides: smoe simulate sets each run
    up as smoe evaluate does, so both print the same cost for the same run."""
    import re

    from smoelib.harness.evaluate import RunSpec, run_one

    for policy in ("oracle", "static-best", "static-mean", "static-peak", "floor",
                   "elasticmoe"):
        code = main(["simulate", "--pipeline", "examples/pipelines/bert-moe.yml", "--trace",
                     "conv-eval", "--policy", policy, "--duration", "20", "--seed", "2",
                     "--no-progress"])
        out = capsys.readouterr().out
        assert code == 0, policy
        cost = float(re.search(r"^cost ([0-9.]+) ", out, re.M).group(1))
        row = run_one(RunSpec("examples/pipelines/bert-moe.yml", "conv-eval", policy, 2,
                              20.0))["run"]
        assert math.isclose(cost, row["cost"], abs_tol=1e-4), policy
