"""One frozen settings tree for every ``smoe`` command, loaded from ``config.yaml``.

Every field has a default, a docstring and a unit (see :func:`~smoelib.settings_base.setting`);
the defaults ship inside the package, so every command works without a file. Validation
collects every problem (unknown keys, wrong types, out-of-range values) and raises them together
as one :class:`~smoelib.errors.ConfigError`. Derived values are properties.

Two parts, one tree: the operator's sections (:mod:`smoelib.settings.operator`: what ``smoe
serve`` reads) and the experiment sections (:mod:`smoelib.settings.experiment`: the simulator
and the baselines). ``examples/config.yaml`` and ``examples/experiment.yaml`` are
:func:`render_example` of the defaults, one part each (``make examples`` writes them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from smoelib.errors import ConfigError, Problem
from smoelib.pipeline.yamlsrc import YamlProblem, load
from smoelib.settings.base import apply_overlay, from_mapping, render_commented, section
from smoelib.settings.experiment import Baselines, Simulator
from smoelib.settings.operator import (
    Actions,
    Cluster,
    Control,
    GpuSharing,
    GpuSharingMode,
    Guards,
    Manifests,
    Metrics,
    Policy,
    Prices,
    Scaler,
    Vertical,
)

__all__ = ["Settings", "load_settings", "render_example", "GpuSharingMode", "OPERATOR",
           "EXPERIMENT"]


@dataclass(frozen=True)
class Settings:
    """The whole settings tree (``config.yaml``)."""

    gpu_sharing: GpuSharing = section(GpuSharing, "GPU sharing mode")
    actions: Actions = section(Actions, "action space: the choices per knob")
    cluster: Cluster = section(Cluster, "cluster capacity and features")
    prices: Prices = section(Prices, "prices for the cost model")
    control: Control = section(Control, "control loop")
    guards: Guards = section(Guards, "guards: maximum steps, rollout budget, hysteresis")
    metrics: Metrics = section(Metrics, "metric source and PromQL overrides")
    scaler: Scaler = section(Scaler, "KEDA external scaler")
    vertical: Vertical = section(Vertical, "vertical backend")
    policy: Policy = section(Policy, "policy and checkpoint")
    manifests: Manifests = section(Manifests, "generated KEDA ScaledObjects")
    simulator: Simulator = section(Simulator, "simulated cluster (experiments)")
    baselines: Baselines = section(Baselines, "each baseline's tuned settings (experiments)")

    def for_pipeline(self, name: str) -> Settings:
        """These settings as pipeline ``name`` runs them: its ``baselines.per_pipeline`` entry
        laid over the baselines, the per-pipeline entries then dropped (so a second call, or
        an override applied after this one, is not undone)."""
        overlay = self.baselines.per_pipeline.get(name, {})
        baselines = apply_overlay(self.baselines, overlay)
        return replace(self, baselines=replace(baselines, per_pipeline=MappingProxyType({})))


OPERATOR: tuple[str, ...] = ("gpu_sharing", "actions", "cluster", "prices", "control", "guards",
                             "metrics", "scaler", "vertical", "policy", "manifests")
"""The sections an operator's file holds (what ``smoe serve`` reads)."""
EXPERIMENT: tuple[str, ...] = ("simulator", "baselines")
"""The sections only experiments read (simulation, evaluation, tuning, training)."""


def load_settings(config: str | Path | Mapping[str, Any] | None = None) -> Settings:
    """Load ``config.yaml`` (a path, a parsed mapping, or None for the packaged defaults).

    Raises:
        ConfigError: every problem found, each naming the file, the field and its line.
    """
    if config is None:
        return Settings()
    source_name = None if isinstance(config, Mapping) else str(config)
    try:
        src = load(config)
    except YamlProblem as e:
        raise ConfigError([e.problem], source=source_name) from None
    problems: list[Problem] = []
    settings = from_mapping(Settings, src.data, source=src, problems=problems)
    if problems:
        raise ConfigError(problems, source=src.name)
    return settings


def render_example(settings: Settings | None = None, *, part: str = "operator") -> str:
    """``config.yaml`` text for one part of the tree (``operator``: what ``smoe serve`` reads;
    ``experiment``: the simulator and the baselines), with every field, its docstring and unit
    as comments."""
    sections = OPERATOR if part == "operator" else EXPERIMENT
    what = (["# sMoE operator settings: what smoe serve (the scaler and the controller), smoe plan",
             "# and smoe manifests read."] if part == "operator" else
            ["# sMoE experiment settings: the simulated cluster and the baselines, read by smoe",
             "# simulate, evaluate, tune, train and demo; smoe serve never needs them."])
    header = what + [
        "# Every field with its default, meaning and unit. Generated from smoelib/settings/",
        "# by `make examples`; every command takes --config FILE (one file may hold",
        "# both parts) and works without one.", ""]
    lines = render_commented(settings or Settings(), only=sections)
    return "\n".join(header + lines) + "\n"
