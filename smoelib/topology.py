"""The seed API's pipeline entry point: ``from smoelib.topology import build_dag``.

The pipeline model lives in :mod:`smoelib.pipeline` (topology, schema, builder, YAML source);
this module is the stable public name of its two entry points.
"""

from smoelib.pipeline.topology import PipelineDAG, build_dag

__all__ = ["build_dag", "PipelineDAG"]
