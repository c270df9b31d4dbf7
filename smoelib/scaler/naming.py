"""The metric name each expert advertises to KEDA, and how a requested name is matched.

KEDA's HPA sees ``s<trigger index>-<name>``; it strips that prefix before ``GetMetrics`` (since
v2.7; earlier versions leaked it) and may lower-case the name on the way through the external
metrics API. So the scaler advertises lower-case ``[a-z0-9-]`` names and matches a requested name
case-insensitively, with or without an ``sN-`` prefix.
"""

from __future__ import annotations

import re

__all__ = ["metric_name", "requested_metric"]

_ALLOWED = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_INDEX_PREFIX = re.compile(r"s[0-9]+-")


def metric_name(pipeline: str, node: str) -> str:
    """The metric name of expert ``node`` of ``pipeline``: ``bert-moe`` + ``moe1/e0`` ->
    ``bert-moe-moe1-e0`` (``/`` is not allowed in a metric name).

    Raises:
        ValueError: the result is not a lower-case ``[a-z0-9-]`` name (the pipeline builder
            only makes DNS-label ids, so this means a pipeline that was not validated).
    """
    name = f"{pipeline}-{node.replace('/', '-')}".lower()
    if not _ALLOWED.fullmatch(name):
        raise ValueError(f"metric name {name!r} of {pipeline}/{node} is not [a-z0-9-]")
    return name


def requested_metric(name: str, *, advertised: str) -> bool:
    """Whether a ``GetMetricsRequest.metricName`` asks for the ``advertised`` name.

    Case-insensitive; an ``sN-`` prefix (KEDA before v2.7) is accepted too.
    """
    wanted = name.lower()
    if wanted == advertised:
        return True
    prefix = _INDEX_PREFIX.match(wanted)
    return prefix is not None and wanted[prefix.end():] == advertised
