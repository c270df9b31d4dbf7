"""Vertical backends: one writer per Deployment, chosen by ``vertical.backend`` in config.

``kubernetes`` patches pods (``pods/resize``), Deployments and OpenFaaS ``Function`` resources;
``openfaas-gateway`` PUTs whole function specs taken from ``stack.yml``; ``simulated`` applies
to the simulator. Each implements :class:`~smoelib.vertical.backends.base.Backend`.
"""

from smoelib.vertical.backends.base import ApplyReport, Backend, ConflictError, Outcome

__all__ = ["Backend", "ApplyReport", "Outcome", "ConflictError"]
