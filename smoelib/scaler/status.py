"""Why the scaler cannot answer, and the one place those reasons become gRPC status codes.

The store and the servicer raise :class:`ScalerLookupError` subclasses; :func:`grpc_status` maps
them (and anything unexpected) to a status code and a message. The rule behind the mapping: a
question about something that does not exist is ``NOT_FOUND``; a malformed question is
``INVALID_ARGUMENT``; a fair question the scaler cannot answer *right now* (no decision, a stale
one, an unreadable decision file) is ``UNAVAILABLE``, which KEDA counts towards the
ScaledObject's ``fallback``. No path answers 0 instead: for an autoscaler a 0 is a scale-down.
"""

from __future__ import annotations

import grpc

__all__ = [
    "ScalerLookupError",
    "MissingMetadata",
    "PipelineNotFound",
    "ExpertNotFound",
    "MetricNotFound",
    "NoDecision",
    "StaleDecision",
    "grpc_status",
]


class ScalerLookupError(Exception):
    """The scaler cannot answer a request; the message says why, naming pipeline and expert."""


class MissingMetadata(ScalerLookupError):
    """The trigger metadata lacks ``pipeline`` or ``expert`` (or the metric name is empty)."""


class PipelineNotFound(ScalerLookupError):
    """The pipeline named in the trigger metadata is not served here."""


class ExpertNotFound(ScalerLookupError):
    """The node id named in the trigger metadata is not an expert of the pipeline."""


class MetricNotFound(ScalerLookupError):
    """``GetMetrics`` asked for a metric name this expert does not advertise."""


class NoDecision(ScalerLookupError):
    """The expert has no decision yet (none made, or the decision file is unreadable)."""


class StaleDecision(ScalerLookupError):
    """The expert's decision is older than the configured staleness."""


_CODES: tuple[tuple[type[ScalerLookupError], grpc.StatusCode], ...] = (
    (MissingMetadata, grpc.StatusCode.INVALID_ARGUMENT),
    (PipelineNotFound, grpc.StatusCode.NOT_FOUND),
    (ExpertNotFound, grpc.StatusCode.NOT_FOUND),
    (MetricNotFound, grpc.StatusCode.NOT_FOUND),
    (NoDecision, grpc.StatusCode.UNAVAILABLE),
    (StaleDecision, grpc.StatusCode.UNAVAILABLE),
)


def grpc_status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message a failed RPC answers with.

    Every handler of the scaler goes through here. An exception that is not a
    :class:`ScalerLookupError` is a bug in the scaler: ``INTERNAL``, never a value.
    """
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code, str(error)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}"
