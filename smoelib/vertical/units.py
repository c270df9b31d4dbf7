"""Kubernetes resource quantities <-> sMoE units (cores, MiB) and the knob env vars.

Pure. Quantities follow the Kubernetes grammar for the suffixes that appear on CPU and memory:
``m`` (milli), decimal ``k M G T P E`` and binary ``Ki Mi Gi Ti Pi Ei``.
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_cpu", "parse_memory_mb", "format_cpu", "format_memory", "thread_percentage",
           "share_from_percentage", "QuantityError"]

_QUANTITY = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")
_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50,
           "Ei": 2.0**60}


class QuantityError(ValueError):
    """A string is not a Kubernetes quantity."""


def _parse(text: str | int | float) -> float:
    if isinstance(text, int | float):
        return float(text)
    match = _QUANTITY.match(str(text))
    if not match or match.group(2) not in _SUFFIX:
        raise QuantityError(f"not a Kubernetes quantity: {text!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def parse_cpu(text: str | int | float) -> float:
    """``"500m"`` -> 0.5 cores."""
    return _parse(text)


def parse_memory_mb(text: str | int | float) -> int:
    """``"2Gi"`` -> 2048 MiB (rounded up to whole MiB)."""
    return math.ceil(_parse(text) / 2.0**20 - 1e-9)


def format_cpu(cores: float) -> str:
    """Cores -> the shortest exact quantity: 2 -> ``"2"``, 0.5 -> ``"500m"``."""
    milli = round(cores * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def format_memory(mb: int) -> str:
    """MiB -> ``"2Gi"`` when whole GiB, else ``"1536Mi"``."""
    return f"{mb // 1024}Gi" if mb % 1024 == 0 else f"{mb}Mi"


def thread_percentage(share: float) -> int:
    """GPU share -> ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (1..100)."""
    return max(1, min(100, round(share * 100)))


def share_from_percentage(text: str) -> float | None:
    """``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` -> GPU share; None when it is not a number."""
    try:
        return float(text) / 100.0
    except ValueError:
        return None
