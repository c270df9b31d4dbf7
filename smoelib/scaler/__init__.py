"""sMoE's KEDA external scaler: replica targets served from the DecisionStore over gRPC.

Public API::

    store = DecisionStore(staleness_s=60, clock=time.time)
    store.add_pipeline(build_dag("pipeline.yml"), decision_path="decisions/bert-moe.json")
    server, port = create_server("0.0.0.0:9090", store=store, registry=CollectorRegistry())
    ...
    server.stop(grace_s=5)

Names load on first use, so that importing ``smoelib.commands.serve`` (which every ``smoe``
command does to build its parser) does not pull in gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smoelib.scaler.naming import metric_name
    from smoelib.scaler.server import ScalerServer, create_server, install_shutdown_signals
    from smoelib.scaler.status import grpc_status
    from smoelib.scaler.store import DecisionStore, ExpertAnswer, PipelineState
    from smoelib.scaler.tls import TlsMaterial

__all__ = ["DecisionStore", "ExpertAnswer", "PipelineState", "metric_name", "grpc_status",
           "ScalerServer", "create_server", "install_shutdown_signals", "TlsMaterial"]

_HOME = {"DecisionStore": "store", "ExpertAnswer": "store", "PipelineState": "store",
         "metric_name": "naming", "grpc_status": "status", "ScalerServer": "server",
         "create_server": "server", "install_shutdown_signals": "server", "TlsMaterial": "tls"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"smoelib.scaler.{_HOME[name]}"), name)
    raise AttributeError(f"module 'smoelib.scaler' has no attribute {name!r}")
