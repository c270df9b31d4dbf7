"""`smoe plan` as an operator types it, against kmock's emulator holding the bert-moe functions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from smoelib.topology import build_dag
from tests.integration import k8s_fixtures
from tests.integration.k8s_fixtures import DEPLOYMENTS, decision_for, seed_pipeline

k8s = k8s_fixtures.k8s  # the emulator fixture
ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "examples" / "pipelines" / "bert-moe.yml"
DAG = build_dag(PIPELINE, validate=True, attach_metadata=True)


def smoe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smoelib.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def kubeconfig(tmp_path: Path, url: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "smoe", "user": {"token": "t"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "smoe"}}]}))
    return str(path)


def test_plan_shows_applies_and_then_plans_nothing(k8s, tmp_path):
    seed_pipeline(k8s, DAG)
    decisions = tmp_path / "d.json"
    decisions.write_text(json.dumps(decision_for(DAG, moe4__e5={"gpu_share": 0.5,
                                                                "concurrency": 8})))
    args = ["plan", "--pipeline", str(PIPELINE), "--decisions", str(decisions),
            "--kubeconfig", kubeconfig(tmp_path, k8s.url)]
    dry = smoe(*args)
    assert dry.returncode == 0, dry.stderr
    doc = yaml.safe_load(dry.stdout)
    assert [p["target"]["name"] for p in doc["patches"]] == ["bert-moe-moe4-e5"]
    assert doc["patches"][0]["changes"]["env.max_inflight"] == {"from": "4", "to": "8"}
    assert len(k8s.history(DEPLOYMENTS, DAG.namespace, "bert-moe-moe4-e5")) == 1  # dry run

    applied = smoe(*args, "--apply")
    assert applied.returncode == 0, applied.stderr
    assert "applied: deployment openfaas-fn/bert-moe-moe4-e5" in applied.stdout
    again = smoe(*args)
    assert again.returncode == 0 and yaml.safe_load(again.stdout)["patches"] == []


def test_bad_input_is_one_line_per_problem_and_exit_2(tmp_path):
    decisions = tmp_path / "d.json"
    decisions.write_text(json.dumps({"pipeline": "bert-moe", "updated_at": 1,
                                     "experts": {"moe1/e0": {"replicas": 1, "cpu": -1,
                                                             "memory_mb": 1, "gpu_share": 2,
                                                             "concurrency": 1}}}))
    proc = smoe("plan", "--pipeline", str(PIPELINE), "--decisions", str(decisions),
                "--gateway", "http://127.0.0.1:9")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {decisions}: experts.moe1/e0.cpu: must be > 0",
        f"error: {decisions}: experts.moe1/e0.gpu_share: must be within [0, 1]"]


def test_the_gateway_backend_refuses_without_a_stack(tmp_path):
    decisions = tmp_path / "d.json"
    decisions.write_text(json.dumps(decision_for(DAG)))
    proc = smoe("plan", "--pipeline", str(PIPELINE), "--decisions", str(decisions),
                "--gateway", "http://127.0.0.1:9")
    assert proc.returncode == 2
    assert "needs stack.yml" in proc.stderr and "Traceback" not in proc.stderr


def test_a_decision_for_another_pipeline_is_refused(tmp_path):
    decisions = tmp_path / "d.json"
    decisions.write_text(json.dumps({**decision_for(DAG), "pipeline": "gpt2-moe"}))
    proc = smoe("plan", "--pipeline", str(PIPELINE), "--decisions", str(decisions),
                "--gateway", "http://127.0.0.1:9")
    assert proc.returncode == 2 and "another pipeline" in proc.stderr


def test_an_unreachable_cluster_is_an_api_failure_not_bad_input(tmp_path):
    decisions = tmp_path / "d.json"
    decisions.write_text(json.dumps(decision_for(DAG)))
    proc = smoe("plan", "--pipeline", str(PIPELINE), "--decisions", str(decisions),
                "--kubeconfig", kubeconfig(tmp_path, "http://127.0.0.1:9"),
                "--config", str(_fast_config(tmp_path)))
    assert proc.returncode == 1 and proc.stderr.startswith("error: pods in openfaas-fn: ")
    assert "Traceback" not in proc.stderr


def _fast_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("vertical:\n  request_timeout_s: 2\n")
    return path


def test_plan_never_prints_an_env_value_that_is_not_smoes(k8s, tmp_path):
    """The JSON patch replaces the whole container, so its body carried every env value (an
    HF_TOKEN) onto stdout; now only sMoE's own variables show their values."""
    deployments = seed_pipeline(k8s, DAG)
    name = "bert-moe-moe4-e5"
    dep = deployments[name]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["env"] = container["env"] + [{"name": "HF_TOKEN", "value": "hf_s3cr3t_t0ken"}]
    k8s.put(DEPLOYMENTS, DAG.namespace, name, dep)
    decisions = tmp_path / "d.json"
    decisions.write_text(json.dumps(decision_for(DAG, moe4__e5={"concurrency": 8})))
    dry = smoe("plan", "--pipeline", str(PIPELINE), "--decisions", str(decisions),
               "--kubeconfig", kubeconfig(tmp_path, k8s.url))
    assert dry.returncode == 0, dry.stderr
    assert "hf_s3cr3t_t0ken" not in dry.stdout + dry.stderr
    env = yaml.safe_load(dry.stdout)["patches"][0]["body"][1]["value"]["env"]
    values = {e["name"]: e["value"] for e in env}
    assert values["HF_TOKEN"] == "<redacted>" and values["max_inflight"] == "8"
