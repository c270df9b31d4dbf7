"""sMoE: a topology-aware autoscaler for Mixture-of-Experts inference served as KEDA-scaled
OpenFaaS functions.

The seed API::

    from smoelib.topology import build_dag
    from smoelib.controller import SMoEController
"""

from smoelib._version import __version__
from smoelib.errors import ConfigError, PipelineError, SmoeError
from smoelib.pipeline.topology import PipelineDAG, build_dag

__all__ = ["__version__", "build_dag", "PipelineDAG", "SmoeError", "PipelineError", "ConfigError"]


def __getattr__(name: str):
    # The controller pulls in the metrics client and the scaler: import it only when asked for.
    if name == "SMoEController":
        from smoelib.control.controller import SMoEController

        return SMoEController
    raise AttributeError(f"module 'smoelib' has no attribute {name!r}")
