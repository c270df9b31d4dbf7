"""Build the configured vertical backend: the one writer of a pipeline's functions.

Used by ``smoe plan`` and by the controller, so both talk to the cluster the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smoelib.errors import ConfigError, Problem
from smoelib.settings import Settings
from smoelib.vertical.backends.base import Backend
from smoelib.vertical.planner import PlanRules

__all__ = ["make_backend", "vertical_loop"]


def make_backend(settings: Settings, *, functions: Sequence[str], namespace: str,
                 kind: str | None = None, kubeconfig: str | None = None,
                 gateway: str | None = None, stack: str | None = None,
                 sim_target: Any = None) -> Backend:
    """The backend ``kind`` (default ``vertical.backend``) for ``functions`` in ``namespace``.

    Raises:
        ConfigError: the gateway backend without ``stack.yml``, a kubeconfig that cannot be
            loaded, or the simulated backend without a simulator to apply to.
    """
    v = settings.vertical
    rules = PlanRules.from_settings(settings)
    kind = kind or v.backend
    if kind == "openfaas-gateway":
        from smoelib.vertical.backends.gateway import GatewayBackend, read_basic_auth
        from smoelib.vertical.backends.stack import load_stack

        stack_file = stack or v.stack_file
        if not stack_file:
            raise ConfigError([Problem("vertical.stack_file", "the openfaas-gateway backend "
                                       "needs stack.yml (--stack): a PUT replaces the whole "
                                       "spec and a GET does not return env vars")])
        specs = load_stack(stack_file, list(functions), namespace=namespace)
        auth = read_basic_auth(v.gateway_auth_dir) if v.gateway_auth_dir else None
        return GatewayBackend(gateway or v.gateway_url, stack=specs, rules=rules,
                              timeout_s=v.request_timeout_s, auth=auth)
    if kind == "kubernetes":
        from smoelib.vertical.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(api_client(kubeconfig), rules=rules,
                                 timeout_s=v.request_timeout_s,
                                 scaledobjects=settings.guards.pause_scaledobject_during_rollout)
    if kind == "none":
        raise ConfigError([Problem("vertical.backend", "is 'none' (replicas only): there is "
                                   "no backend to plan against; use --kubeconfig or --gateway")])
    if sim_target is None:
        raise ConfigError([Problem("vertical.backend", "the simulated backend applies to a "
                                   "running simulator (smoe demo); smoe plan needs "
                                   "--kubeconfig or --gateway")])
    from smoelib.vertical.backends.simulated import SimulatedBackend

    return SimulatedBackend(sim_target)


def vertical_loop(dag: Any, settings: Settings, *, kind: str | None = None,
                  sim_target: Any = None) -> Any:
    """The vertical loop over the configured backend (or ``kind``; ``sim_target`` for
    simulated) for the pipeline's expert functions."""
    from smoelib.vertical.loop import VerticalLoop

    backend = make_backend(settings, functions=sorted(dag.function_name(n) for n in dag.experts),
                           namespace=dag.namespace, kind=kind, sim_target=sim_target)
    return VerticalLoop(dag, backend, settings)


def api_client(kubeconfig: str | None) -> object:
    """A Kubernetes API client: in-cluster config first (when no file is named), else the file.

    Raises:
        ConfigError: neither can be loaded.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    configuration.retries = False  # sMoE owns retries (409 re-plans); urllib3 must not add its own
    try:
        if kubeconfig is None:
            try:
                config.load_incluster_config(client_configuration=configuration)
                return client.ApiClient(configuration)
            except config.ConfigException:
                pass
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return client.ApiClient(configuration)
    except (config.ConfigException, OSError) as e:
        raise ConfigError([Problem("--kubeconfig", f"cannot load: {e}")],
                          source=kubeconfig or "kubeconfig") from e
