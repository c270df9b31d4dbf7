"""Random pipelines for training: one seed, one pipeline; every one builds, fits half the
cluster's GPUs at its defaults, and has its SLOs where the example files have theirs."""

from __future__ import annotations

import pytest

from smoelib.core.accounting import gpu_per_pod
from smoelib.settings import load_settings
from smoelib.sim.pipelines import no_load, random_pipeline, random_pipeline_spec

SETTINGS = load_settings(None)


def test_one_seed_one_pipeline():
    assert random_pipeline_spec(3) == random_pipeline_spec(3)
    assert random_pipeline(3).slo == random_pipeline(3).slo
    specs = [random_pipeline_spec(s) for s in range(12)]
    assert len({repr(s) for s in specs}) == 12
    # the draw covers what one checkpoint has to serve: both kinds, GPU and CPU experts
    assert {s["kind"] for s in specs} == {"encoder", "decoder"}
    assert {s["accelerator"] for s in specs} == {"cpu", "h100"}


@pytest.mark.parametrize("seed", range(0, 40, 4))
def test_every_pipeline_fits_and_its_slo_sits_where_the_examples_do(seed):
    dag = random_pipeline(seed)
    assert dag.name == f"random-{seed}" and dag.experts and dag.moe_layers
    specs = [dag.spec(n) for n in dag.nodes]
    share = gpu_per_pod([s.gpu_share for s in specs], mode=SETTINGS.gpu_sharing.mode,
                        slots_per_gpu=SETTINGS.gpu_sharing.slots_per_gpu)
    assert float(share.sum()) <= 0.5 * SETTINGS.cluster.gpus
    assert all(s.memory_mb >= SETTINGS.cluster.runtime_memory_mb + s.weights_mb
               for s in specs if s.kind == "expert")
    # another no-load run than the one that set the SLOs (other arrivals, 1 % of the rate)
    s = no_load(dag, settings=SETTINGS, duration_s=300.0, fraction=0.02, seed=seed + 7)
    assert s.completed >= 3 and s.dropped == 0
    assert 0.25 <= s.ttft_p50_ms / s.ttft_slo_ms <= 0.6
    if dag.decodes:
        assert 0.25 <= s.tpot_p50_ms / s.tpot_slo_ms <= 0.6
