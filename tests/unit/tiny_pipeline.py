"""The hand-made pipeline the baseline and tuning tests compute their numbers on: an embedding
segment, one MoE layer of two experts (top-1), a head segment; SLO 40 ms."""

from __future__ import annotations

from smoelib.pipeline.topology import PipelineDAG, build_dag

PIPELINE = """\
name: tiny
slo_ms: 40
max_seq_tokens: 512
defaults:
  expert: {cpu: 1.0, memory_mb: 2048, gpu_share: 0.25, concurrency: 4, parallelism: 1,
           replicas: {min: 0, max: 20}, weights_mb: 9.4,
           profile: {base_ms: 0.6, per_token_ms: 0.002}}
  segment: {cpu: 1.0, memory_mb: 1024, gpu_share: 0.25, concurrency: 8,
            replicas: {min: 1, max: 4}, weights_mb: 10,
            profile: {base_ms: 0.3, per_token_ms: 0.0005}}
stages:
  - {id: embed, kind: segment}
  - {id: moe1, kind: moe, experts: 2, top_k: 1}
  - {id: head, kind: segment}
"""


def tiny_dag(tmp_path) -> PipelineDAG:
    """Write the pipeline under ``tmp_path`` and build it."""
    path = tmp_path / "tiny.yml"
    path.write_text(PIPELINE)
    return build_dag(str(path))
