"""The evaluation harness: common random numbers, hindsight that changes nothing, guards,
the results format, the checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from smoelib.harness.evaluate import (
    RUN_KEYS,
    RunSpec,
    checks,
    hindsight,
    paired_ratio,
    run_one,
    table_markdown,
)
from smoelib.policy.baselines.common import Experts, with_overrides
from smoelib.settings import Settings
from smoelib.sim.env import SimEnv
from smoelib.sim.summary import summarise
from smoelib.topology import build_dag

pytestmark = pytest.mark.heavy  # minutes of simulated traffic: the lowest-bounds run skips it

BERT = "examples/pipelines/bert-moe.yml"


def _static_run(peek: bool) -> tuple:
    dag = build_dag(BERT)
    env = SimEnv(dag, Settings(), trace="bursty", duration_s=30)
    env.reset(seed=3)
    future = hindsight(env, Experts(dag)) if peek else None
    done = False
    while not done:
        done = env.step(None).done
    return summarise(env), future


def test_reading_the_future_changes_nothing_and_matches_what_was_served():
    plain, _ = _static_run(False)
    peeked, future = _static_run(True)
    assert plain == peeked
    # every request calls each expert it routed tokens to: total calls match the telemetry
    assert future.calls.shape == (6, 72)
    assert np.all(future.tokens >= future.calls)


def test_paired_ratio_and_its_interval():
    g, lo, hi = paired_ratio([0.9, 0.8, 1.0], [1.0, 1.0, 1.0])
    logs = np.log([0.9, 0.8, 1.0])
    assert g == pytest.approx(np.exp(logs.mean()))
    half = 4.303 * logs.std(ddof=1) / np.sqrt(3)  # Student's t, 2 degrees of freedom
    assert (lo, hi) == pytest.approx((np.exp(logs.mean() - half), np.exp(logs.mean() + half)))
    assert paired_ratio([0.9] * 4, [1.0] * 4) == pytest.approx((0.9, 0.9, 0.9))
    assert np.isnan(paired_ratio([0.9], [1.0])[1])


def test_paired_checks_need_the_interval_below_one():
    def run(policy, seed, cost):
        return {"run": {"pipeline": "p", "trace": "bursty", "policy": policy, "seed": seed,
                        "cost": cost, "slo_attainment": 0.99, "dropped": 0,
                        "window_violation_rate": 0.0}}
    base = [run(r, s, 1.0) for r in ("queueing", "shield-only") for s in (1, 2, 3)]
    sure = base + [run("smoe", s, c) for s, c in ((1, 0.90), (2, 0.92), (3, 0.91))]
    lines = [x for x in checks(sure) if "smoe /" in x]
    assert [x[:4] for x in lines] == ["PASS", "PASS"] and "shield-only" in lines[1]
    assert "95 % CI" in lines[0] and "over 3 seeds" in lines[0]
    # cheaper on average, but one seed costs more: the interval reaches above 1
    loose = base + [run("smoe", s, c) for s, c in ((1, 0.70), (2, 1.05), (3, 0.90))]
    assert all(x.startswith("FAIL") for x in checks(loose) if "smoe /" in x)


def test_same_requests_for_every_policy_and_design_keys():
    rows = [run_one(RunSpec(BERT, "spike", p, 5, 30.0))["run"]
            for p in ("static", "hpa", "queueing", "floor")]
    assert {r["requests"] for r in rows} == {rows[0]["requests"]}
    assert all(tuple(r) == RUN_KEYS for r in rows)
    assert all(r["decide_ms_p50"] >= 0 and r["cost"] > 0 for r in rows)
    floor, others = rows[3]["cost"], [r["cost"] for r in rows[:3]]
    assert floor < min(others)


def test_physical_guards_apply_to_every_policy():
    # a 2-GPU cluster cannot hold 72 default experts at 0.25: the guard trims to capacity
    res = run_one(RunSpec(BERT, "poisson", "static-peak", 5, 10.0,
                          overrides=(("cluster.gpus", 2),)))
    assert res["run"]["requests"] > 0


def test_overrides_are_dotted_paths():
    s = with_overrides(Settings(), {"simulator.hpa_preset": "stock", "cluster.gpus": 3})
    assert s.simulator.hpa_preset == "stock" and s.cluster.gpus == 3
    assert dataclasses.replace(s, cluster=Settings().cluster).cluster.gpus == 64


def test_table_and_checks_say_pass_or_fail():
    def run(policy, cost, viol=0.0, worst=0.995):
        return {"run": {"pipeline": "p", "trace": "conv-eval", "policy": policy, "seed": 1,
                        "cost": cost, "worst_window_attainment": worst,
                        "attainment_target": 0.99,
                        "ttft_p95_ms": 10.0, "ttft_slo_ms": 20.0, "tpot_p95_ms": 4.0,
                        "tpot_slo_ms": 8.0, "slo_attainment": 0.995, "dropped": 0,
                        "rejected": 0, "window_violation_rate": viol, "decide_ms_p50": 0.1,
                        "guards": "physical", "pods_replaced": 0}}
    results = [run("hpa", 2.0), run("queueing", 1.5), run("oracle", 1.6), run("floor", 0.5)]
    lines = checks(results)
    assert lines[0].startswith("PASS") and "floor" in lines[0]
    assert lines[1].startswith("FAIL") and "oracle" in lines[1]
    assert lines[2].startswith("PASS") and "queueing" in lines[2]
    text = table_markdown(results)
    assert "| queueing | physical | 0.750 |" in text and "Acceptance checks" in text
    # the learned policy against both: cheaper than hpa, but a tie with queueing is no win
    assert lines[3] == "ROOM p/conv-eval: 1 - oracle / queueing = -0.067"
    lines = checks(results + [run("smoe", 1.5)])
    assert [x[:4] for x in lines[3:7]] == ["FAIL", "PASS", "ROOM", "WON "]
    assert lines[6] == "WON p/conv-eval: no room over queueing (oracle 1.600 >= 1.500); smoe 1.500"
    assert lines[3].startswith("FAIL p/conv-eval: smoe / queueing paired cost 1.000 (1 seed")
    assert "(1 seed, no interval; 1.500 vs 2.000)" in lines[4]
    lines = checks(results + [run("smoe", 1.0, viol=0.1)])  # cheaper, but violates more
    assert [x[:4] for x in lines[3:5]] == ["FAIL", "FAIL"]
    low = run("smoe", 1.0)
    low["run"]["slo_attainment"] = 0.992  # 0.3 points below the rivals' 0.995
    assert [x[:4] for x in checks(results + [low])[3:5]] == ["FAIL", "FAIL"]
    # the yardstick: static-best at least 1.3x oracle on conv; static-mean misses at the peak
    mean_sized = run("static-mean", 1.2, worst=0.9)
    mean_sized["run"]["slo_attainment"] = 0.95
    lines = checks(results + [run("static-best", 2.2), mean_sized])
    assert any(x.startswith("PASS p/conv-eval: static-best 2.200 >= 1.3 x oracle") for x in lines)
    assert any(x.startswith("PASS p/conv-eval: static-mean's worst") for x in lines)
    assert "ROOM p/conv-eval: 1 - oracle / static-best = 0.273" in lines
    # the share of the room smoe won: a quarter of the way from static-best to the oracle
    lines = checks(results + [run("static-best", 2.2), run("smoe", 2.05)])
    assert ("WON p/conv-eval: smoe won 0.25 of the room over static-best ((2.200 - smoe 2.050) "
            "/ (2.200 - oracle 1.600))") in lines
    assert any(x.startswith("WON p/conv-eval: no room over queueing") for x in lines)
    # a failed ratio says when floor's warm floor leaves no policy the room to pass it
    warm = run("floor", 0.5)
    warm["run"]["warm_cost"] = 1.55
    lines = checks([r for r in results if r["run"]["policy"] != "floor"]
                   + [warm, run("static-best", 1.8)])
    fail = [x for x in lines if x.startswith("FAIL p/conv-eval: static-best 1.800")]
    assert fail and fail[0].endswith("warm: static-best is 1.16x the warm floor 1.550")
    warm["run"]["warm_cost"] = 1.65  # the oracle (1.6) undercuts it: no claim on every policy
    lines = checks([r for r in results if r["run"]["policy"] != "floor"]
                   + [warm, run("static-best", 1.8)])
    fail = [x for x in lines if x.startswith("FAIL p/conv-eval: static-best 1.800")]
    assert fail[0].endswith("; static-best is 1.09x the warm floor 1.650, which the oracle "
                            "undercuts (0.97x)")
    warm["run"]["warm_cost"] = 1.0  # room enough: the failure is the oracle's
    lines = checks([r for r in results if r["run"]["policy"] != "floor"]
                   + [warm, run("static-best", 1.8)])
    assert "warm floor" not in " ".join(lines)
    # static-mean that holds at the peak because it bought the peak's configuration says so
    lines = checks(results + [run("static-best", 2.2), run("static-mean", 2.2, worst=1.0)])
    fail = [x for x in lines if x.startswith("FAIL p/conv-eval: static-mean's worst")]
    assert fail and "costs 1.00x static-best" in fail[0] and "warm floor" not in fail[0]
    lines = checks([r for r in results if r["run"]["policy"] != "floor"]
                   + [warm, run("static-best", 2.2), run("static-mean", 1.1, worst=1.0)])
    fail = [x for x in lines if x.startswith("FAIL p/conv-eval: static-mean's worst")]
    assert fail[0].endswith("; it costs 1.10x the warm floor 1.000")
    # a cheaper static row that meets the target over the episode is the cheapest static
    # configuration measured: the ratio and the room use it, and say so
    lines = checks(results + [run("static-best", 2.2), run("static-mean", 1.9, worst=1.0)])
    ratio = [x for x in lines if "static-best 1.900 (that of static-mean" in x]
    assert ratio and ratio[0].startswith("FAIL") and "(1.19x)" in ratio[0]
    assert any(x.startswith("ROOM p/conv-eval: 1 - oracle / static-best = 0.158 (that of")
               for x in lines)
    mean_sized["run"]["cost"] = 1.9  # misses over the episode: not a static-best
    lines = checks(results + [run("static-best", 2.2), mean_sized])
    assert "PASS p/conv-eval: static-best 2.200 >= 1.3 x oracle 1.600 (1.38x)" in lines


def test_a_journal_resumes_and_a_changed_config_runs_again(tmp_path):
    from smoelib.harness.evaluate import _key, run_all

    config = tmp_path / "config.yaml"
    config.write_text("simulator: {rate_scale: 1.0}\n")
    spec = RunSpec("examples/pipelines/bert-moe-cpu.yml", "poisson", "static", 1, 10.0,
                   str(config))
    journal = tmp_path / "runs.jsonl"
    kept = {"run": {"policy": "static", "cost": -1.0}, "series": {}, "spec": {}}
    # a run already journaled, then a line cut short by a stop (skipped)
    journal.write_text(json.dumps({**kept, "key": _key(spec)}) + "\n{\"run\": \n")
    assert run_all([spec], progress=False, journal=journal) == [kept]  # not run again
    config.write_text("simulator: {rate_scale: 2.0}\n")
    (fresh,) = run_all([spec], progress=False, journal=journal)
    assert fresh["run"]["cost"] > 0 and len(journal.read_text().splitlines()) == 3


def test_a_worker_that_dies_ends_the_evaluation_with_an_error_not_a_hang(tmp_path):
    """A script without a main guard: every spawned worker re-runs it and dies at start."""
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text(
        "from smoelib.errors import SmoeError\n"
        "from smoelib.harness.evaluate import RunSpec, run_all\n"
        "spec = RunSpec('examples/pipelines/bert-moe-cpu.yml', 'poisson', 'static', 1, 5.0)\n"
        "try:\n"
        "    run_all([spec, spec], jobs=2, progress=False)\n"
        "except SmoeError as e:\n"
        "    print('refused:', e)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert "refused: a run's worker process ended abruptly" in done.stdout, done.stderr[-2000:]
