"""Each example pipeline's SLO sits where its file says: the static defaults at no load take
0.3-0.6 of each SLO (the arithmetic in each file; benchmarks/no_load.py prints it)."""

from __future__ import annotations

import glob

import pytest

from benchmarks.no_load import no_load

pytestmark = pytest.mark.heavy  # minutes of simulated traffic: the lowest-bounds run skips it

EXAMPLES = sorted(glob.glob("examples/pipelines/*.yml"))
CONFIG = {"deepseek-v3": "examples/deepseek-cluster.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.split("/")[-1])
def test_static_defaults_at_no_load_sit_at_0_3_to_0_6_of_each_slo(path):
    name = path.split("/")[-1][:-4]
    big = name == "deepseek-v3"
    dag, s = no_load(path, config=CONFIG.get(name), duration_s=30.0 if big else 120.0)
    assert s.requests >= 2 and s.dropped == 0
    assert 0.3 <= s.ttft_p50_ms / s.ttft_slo_ms <= 0.6
    if dag.decodes:
        assert 0.3 <= s.tpot_p50_ms / s.tpot_slo_ms <= 0.6
