"""The registry every decider is found through.

A decider (:class:`~smoelib.core.ports.Decider`) turns an
:class:`~smoelib.core.observation.Observation` into a
:class:`~smoelib.core.decisions.PipelineDecision` once per control tick. Deciders are built by
name with ``get_decider(name, dag=..., settings=...)``; a module registers its deciders with
``@register("name", guards=...)`` and is listed in :data:`DECIDER_MODULES` so that it is
imported on first lookup (no import-time side effects elsewhere).

Each name carries the guard profile it runs under by default (:func:`default_guards`):
``production`` for the policies sMoE's controller would run (the learned ones, ``queueing``,
``oracle``, ...), ``physical`` for the external systems it is compared with, which run in their
own world with only the cluster's physical limits. Any run can ask for another by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from smoelib.core.guards import PROFILES
from smoelib.core.ports import Decider
from smoelib.errors import ConfigError, Problem

__all__ = ["Decider", "register", "get_decider", "available", "default_guards",
           "DECIDER_MODULES"]

# Modules that define deciders; each is imported (if it exists) before a lookup.
DECIDER_MODULES: tuple[str, ...] = (
    "smoelib.policy.static",
    "smoelib.policy.baselines",
    "smoelib.policy.decider",
)

Factory = Callable[..., "Decider"]
_REGISTRY: dict[str, Factory] = {}
_GUARDS: dict[str, str] = {}


def register(name: str, *, guards: str = "production") -> Callable[[Factory], Factory]:
    """Class decorator: make a decider available as ``name``, running under the guard profile
    ``guards`` unless a run asks for another. The factory is called as
    ``factory(dag=..., settings=...)``."""
    if guards not in PROFILES:
        raise ValueError(f"decider {name!r}: unknown guard profile {guards!r}")

    def add(factory: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"decider {name!r} is registered twice")
        _REGISTRY[name] = factory
        _GUARDS[name] = guards
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


def default_guards(name: str) -> str:
    """The guard profile decider ``name`` runs under by default.

    Raises:
        ConfigError: no decider of that name.
    """
    _find(name)
    return _GUARDS[name]


def available() -> tuple[str, ...]:
    """Every registered decider name, sorted."""
    _load_modules()
    return tuple(sorted(_REGISTRY))


def get_decider(name: str, *, dag, settings) -> Decider:
    """A new decider by registry name, with the baselines' settings for ``dag``
    (:meth:`~smoelib.settings.Settings.for_pipeline`).

    Raises:
        ConfigError: no decider of that name (the message lists the known ones).
    """
    return _find(name)(dag=dag, settings=settings.for_pipeline(dag.name))


def _find(name: str) -> Factory:
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
    return factory
