"""The ``simulated`` backend: vertical changes applied to the simulator.

The simulator implements :class:`VerticalTarget`, two methods over plain values, so it needs
nothing from this package:

- ``vertical_state(function)`` -> ``{"cpu", "memory_mb", "gpu_share", "concurrency",
  "replicas", "ready_replicas"}`` (cores, MiB, fraction of a GPU, calls in flight per replica,
  pods) as the function's pod template has them, or None for an unknown function;
- ``apply_vertical(function, changes, in_place=...)`` with ``changes`` a subset of
  ``{"cpu", "memory_mb", "gpu_share", "concurrency"}``. ``in_place=True`` (CPU and memory only):
  resize the running replicas and the template, no restart. ``in_place=False``: change the
  template and replace the replicas (a rollout: cold starts, capacity dips per its strategy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from smoelib.errors import PermanentError
from smoelib.vertical.records import FunctionState, Knobs, Patch, PipelineState

__all__ = ["VerticalTarget", "SimulatedBackend"]


class VerticalTarget(Protocol):
    """What the simulator offers the vertical module."""

    def vertical_state(self, function: str) -> Mapping[str, float] | None: ...

    def apply_vertical(self, function: str, changes: Mapping[str, float], *,
                       in_place: bool) -> None: ...


class SimulatedBackend:
    """Reads and changes functions of a :class:`VerticalTarget`."""

    def __init__(self, target: VerticalTarget):
        self.target = target

    def read_state(self, pipeline: str, namespace: str, functions: Sequence[str]
                   ) -> PipelineState:
        states, missing = {}, {}
        for name in functions:
            view = self.target.vertical_state(name)
            if view is None:
                missing[name] = "the simulator has no such function"
                continue
            knobs = Knobs(cpu=float(view["cpu"]), memory_mb=int(view["memory_mb"]),
                          gpu_share=float(view["gpu_share"]),
                          concurrency=int(view["concurrency"]))
            states[name] = FunctionState(function=name, namespace=namespace, writer="simulated",
                                         knobs=knobs, replicas=int(view.get("replicas", 0)),
                                         ready_replicas=int(view.get("ready_replicas", 0)))
        return PipelineState(pipeline=pipeline, namespace=namespace, functions=states,
                             missing=missing)

    def apply(self, patch: Patch) -> None:
        if patch.patch_type != "sim":
            raise PermanentError(f"{patch.target}: the simulated backend applies only "
                                 "simulator change sets")
        self.target.apply_vertical(patch.function, dict(patch.body),
                                   in_place=patch.subresource == "resize")

    def stuck_resizes(self, pods: Sequence[Patch], timeout_s: float) -> set[str]:
        return set()  # the simulator resizes at once
