"""Random MoE pipelines for training, so that one checkpoint serves pipelines it never saw
(the policy issue's training distribution: the example pipelines and random ones of other
sizes). One seed, one pipeline.

A pipeline is drawn as the example files are written: an embedding, then ``layers`` times a
segment and an MoE layer of ``experts`` experts (top-1 or top-2), then a head; an encoder or a
decoder (which decodes up to ``decode_cap`` tokens, one pass each); experts on an H100 (a GPU
share each, the defaults within half the cluster's GPUs) or on CPU; an expert shape whose
weights follow from it. Its SLOs are set as the examples set theirs
(tests/unit/test_examples_slo.py): the static defaults at no load (:func:`no_load`) take a
drawn 0.35-0.55 of each SLO at the median, and at most 0.9 of it at the P99. Its
``rate_scale`` makes one replica of its busiest expert a drawn 20-60 % busy on average at the
static defaults (measured in the same no-load run), within 0.5-2x conv's rate; training scales
the rate again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smoelib.errors import ConfigError, Problem
from smoelib.pipeline.topology import PipelineDAG, build_dag
from smoelib.settings import Settings, load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.summary import Summary, summarise

__all__ = ["random_pipeline", "random_pipeline_spec", "no_load", "load_pipeline", "RANDOM"]

RANDOM = "random:"
"""the prefix that names a random pipeline where a pipeline file is expected: ``random:SEED``
(training draws seeds 0 to N-1; seeds from 1000 on are left for evaluation)"""

_UNSET_SLO_MS = 1e6  # while the no-load run measures what the SLO is set against


def no_load(dag: PipelineDAG, *, settings: Settings | None = None, duration_s: float = 120.0,
            fraction: float = 0.01, seed: int = 1) -> Summary:
    """The static defaults' latencies at no load: the request-level simulator at ``fraction``
    of the pipeline's default rate on conv-train, replicas at their defaults."""
    return summarise(_no_load_env(dag, settings, duration_s, fraction, seed))


def _no_load_env(dag: PipelineDAG, settings: Settings | None, duration_s: float,
                 fraction: float, seed: int) -> SimEnv:
    settings = settings if settings is not None else load_settings(None)
    env = SimEnv(dag, settings, trace="conv-train", duration_s=duration_s,
                 rate_scale=dag.rate_scale * fraction)
    env.reset(seed)
    done = False
    while not done:
        done = env.step(None).done
    return env


def _hottest_busy(env: SimEnv, fraction: float) -> float:
    """How busy one worker of the busiest expert would be at the full rate: its busy time in
    the run, over its workers and the run's length, divided by the run's share of the rate."""
    w = env.tel.window(env.tick - 1, env.tick)
    experts = np.asarray(env.is_expert, bool)
    busy = w["busy_s"][experts] / (env.server.par[experts] * env.tick * env.dt)
    return float(busy.max()) / fraction


def random_pipeline_spec(seed: int, *, settings: Settings | None = None) -> dict[str, Any]:
    """The ``pipeline.yml`` mapping of random pipeline ``seed``, its SLOs not yet set (a
    placeholder far above any latency; :func:`random_pipeline` sets them)."""
    settings = settings if settings is not None else load_settings(None)
    rng = np.random.default_rng([seed, 0x5E])
    decoder = bool(rng.random() < 0.6)
    cpu = bool(rng.random() < 0.25)
    layers = int(rng.integers(2, 17))
    experts = int(rng.choice([4, 6, 8, 16, 32]))
    top_k = int(rng.choice([1, 2]))
    d_model = int(rng.choice([512, 768, 1024] if cpu else [512, 768, 1024, 2048, 4096]))
    d_ff = d_model * int(rng.choice([2, 4]))
    matrices = int(rng.choice([2, 3]))  # a plain FFN, or a gated (SwiGLU) one
    weights_mb = round(d_model * d_ff * matrices * (4 if cpu else 2) / 2 ** 20, 1)
    floor = settings.cluster.runtime_memory_mb + weights_mb
    memory = min((m for m in settings.actions.memory_mb if m >= floor),
                 default=max(settings.actions.memory_mb))
    share = 0.0 if cpu else float(rng.choice([0.1, 0.25, 0.5]))
    if not cpu:  # the defaults take at most half the cluster's GPUs (segments at 0.25 each)
        budget = 0.5 * settings.cluster.gpus
        while layers > 1 and layers * experts * 0.1 + (layers + 2) * 0.25 > budget:
            layers -= 1
        while share > 0.1 and layers * experts * share + (layers + 2) * 0.25 > budget:
            share = {0.5: 0.25, 0.25: 0.1}[share]
    slo: dict[str, Any] = {"ttft_ms": _UNSET_SLO_MS, "attainment": 0.99}
    if decoder:
        slo["tpot_ms"] = _UNSET_SLO_MS
    stages: list[dict[str, Any]] = [{"id": "embed", "kind": "segment",
                                     "weights_mb": float(rng.choice([90, 150]))}]
    for layer in range(1, layers + 1):
        stages += [{"id": f"attn{layer}", "kind": "segment"},
                   {"id": f"moe{layer}", "kind": "moe", "experts": experts, "top_k": top_k}]
    stages.append({"id": "lm-head" if decoder else "pooler", "kind": "segment"})
    return {
        "name": f"random-{seed}",
        "kind": "decoder" if decoder else "encoder",
        "slo": slo,
        "max_seq_tokens": 1024 if decoder else 512,
        **({"decode_cap": int(rng.choice([128, 256, 512]))} if decoder else {}),
        "accelerator": "cpu" if cpu else "h100",
        "rate_scale": 1.0,  # set against the busiest expert (random_pipeline)
        "defaults": {
            "expert": {"cpu": 1.0, "memory_mb": memory, "gpu_share": share, "concurrency": 4,
                       "parallelism": 1, "replicas": {"min": 0, "max": 8},
                       "weights_mb": weights_mb,
                       "shape": {"d_model": d_model, "d_ff": d_ff, "matrices": matrices,
                                 "dtype": "fp32" if cpu else "bf16"}},
            "segment": {"cpu": 2.0, "memory_mb": 2048, "gpu_share": 0.0 if cpu else 0.25,
                        "concurrency": 8, "parallelism": 2, "replicas": {"min": 1, "max": 16},
                        "weights_mb": 14, "profile": {"base_ms": 0.3, "per_token_ms": 0.0005}},
        },
        "stages": stages,
    }


def random_pipeline(seed: int, *, settings: Settings | None = None) -> PipelineDAG:
    """Random pipeline ``seed`` with its SLOs set against its no-load latencies (module
    docstring). Costs one short request-level run.

    Raises:
        ConfigError: the draw's static defaults drop requests at no load.
    """
    settings = settings if settings is not None else load_settings(None)
    spec = random_pipeline_spec(seed, settings=settings)
    rng = np.random.default_rng([seed, 0x510])
    # 5 % of the rate for 120 s: a few dozen requests, still far from any queueing
    env = _no_load_env(build_dag(spec), settings, 120.0, 0.05, seed)
    s = summarise(env)
    if s.completed < 3 or s.dropped:  # a draw the defaults cannot serve: say so, no traceback
        raise ConfigError([Problem("", f"the static defaults' no-load run completed "
                                       f"{s.completed} requests and dropped {s.dropped}; "
                                       "pick another seed")], source=f"{RANDOM}{seed}")
    # the rate at which one replica of the busiest expert is a drawn 20-60 % busy on average
    # (the examples: 40-70 % at conv-train's peak minute), within 0.5-2x conv's rate: a fast
    # GPU expert would need thousands of requests a second, which the segments would not serve
    busy = _hottest_busy(env, 0.05)
    want = spec["rate_scale"] * rng.uniform(0.2, 0.6) / busy if busy > 0 else 2.0
    spec["rate_scale"] = round(min(max(want, 0.5), 2.0), 3)
    slo = dict(spec["slo"])
    slo["ttft_ms"] = _slo_ms(s.ttft_p50_ms, s.ttft_p99_ms, rng)
    if "tpot_ms" in slo:
        slo["tpot_ms"] = _slo_ms(s.tpot_p50_ms, s.tpot_p99_ms, rng)
    return build_dag({**spec, "slo": slo})


def _slo_ms(p50_ms: float, p99_ms: float, rng: np.random.Generator) -> float:
    """An SLO the median takes a drawn 0.35-0.55 of, and the P99 at most 0.9 of (ms, to 0.1)."""
    return round(max(p50_ms / rng.uniform(0.35, 0.55), p99_ms / 0.9), 1)


def load_pipeline(ref: str, *, settings: Settings | None = None) -> PipelineDAG:
    """The pipeline ``ref`` names: ``random:SEED`` (:func:`random_pipeline`) or a pipeline
    file.

    Raises:
        ConfigError: a bad file, or a seed that is not a non-negative integer.
    """
    if not ref.startswith(RANDOM):
        return build_dag(ref)
    seed = ref[len(RANDOM):]
    if not seed.isdigit():
        raise ConfigError([Problem("", "expected random:SEED with SEED a non-negative "
                                       "integer")], source=ref)
    return random_pipeline(int(seed), settings=settings)
