"""The decider protocol and the registry every decider is found through.

A decider turns an :class:`~smoelib.core.observation.Observation` into a
:class:`~smoelib.core.decisions.PipelineDecision` once per control tick. Deciders are built by name
with ``get_decider(name, dag=..., settings=...)``; a module registers its deciders with
``@register("name")`` and is listed in :data:`DECIDER_MODULES` so that it is imported on first
lookup (no import-time side effects elsewhere).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from smoelib.core.decisions import PipelineDecision
from smoelib.errors import ConfigError, Problem

__all__ = ["Decider", "register", "get_decider", "available", "DECIDER_MODULES"]

# Modules that define deciders; each is imported (if it exists) before a lookup.
DECIDER_MODULES: tuple[str, ...] = (
    "smoelib.policy.static",
    "smoelib.policy.baselines",
    "smoelib.policy.decider",
)

Factory = Callable[..., "Decider"]
_REGISTRY: dict[str, Factory] = {}


@runtime_checkable
class Decider(Protocol):
    """Decides every expert's knobs from one observation. Pure given its seed."""

    def reset(self, seed: int) -> None:
        """Start an episode: clear history, seed any randomness."""

    def decide(self, observation: Any) -> PipelineDecision:
        """One decision for the tick the observation describes."""


def register(name: str) -> Callable[[Factory], Factory]:
    """Class decorator: make a decider available as ``name``. The factory is called as
    ``factory(dag=..., settings=...)``."""
    def add(factory: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"decider {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory
    return add


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name):
            raise


def _load_modules() -> None:
    for module in DECIDER_MODULES:
        _import(module)


def available() -> tuple[str, ...]:
    """Every registered decider name, sorted."""
    _load_modules()
    return tuple(sorted(_REGISTRY))


def get_decider(name: str, *, dag, settings) -> Decider:
    """A new decider by registry name.

    Raises:
        ConfigError: no decider of that name (the message lists the known ones).
    """
    if name not in _REGISTRY:  # import decider modules only when needed (torch is heavy)
        for module in DECIDER_MODULES:
            _import(module)
            if name in _REGISTRY:
                break
    factory = _REGISTRY.get(name)
    if factory is None:
        _load_modules()
        raise ConfigError([Problem("policy", f"unknown policy {name!r}; available: "
                                   f"{', '.join(sorted(_REGISTRY))}")])
    return factory(dag=dag, settings=settings)
