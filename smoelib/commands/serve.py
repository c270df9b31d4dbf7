"""``smoe serve``: run the KEDA external scaler for one or more pipelines.

Each ``--pipeline`` is served from its decision file: ``--decisions`` given once per pipeline
(paired in order), or once as an existing directory holding ``<pipeline name>.json``. Without
``--decisions`` decisions live in memory only. A decision file is read at start and re-read
whenever it changes on disk. A corrupt or foreign file is logged as an error naming the file
and field, and never served: at start the pipeline answers UNAVAILABLE (so KEDA's fallback
acts, and a restarting pod does not crash-loop) until a good decision arrives; later, the
pipeline keeps its last good decision, whose age keeps growing until it is stale.

Ports and staleness default to the ``scaler`` section of ``--config``. SIGTERM (or SIGINT) stops
gracefully: readiness goes NOT_SERVING, streams end, in-flight RPCs finish, exit 0. Other parts
(the controller) join the process as :class:`Component` objects sharing the store.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from smoelib.errors import EXIT_BAD_INPUT, EXIT_OK, ConfigError, PipelineError, Problem

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from smoelib.pipeline.topology import PipelineDAG
    from smoelib.scaler.store import DecisionStore
    from smoelib.scaler.tls import TlsMaterial

__all__ = ["add_arguments", "run", "ServePlan", "plan_from_args", "serve", "Component"]

log = logging.getLogger(__name__)

_ARGS = "smoe serve"  # the "file" named by problems with command-line values
RELOAD_INTERVAL_S = 1.0
"""How often decision files are checked for changes on disk, seconds."""
SHUTDOWN_GRACE_S = 5.0
"""In-flight RPCs get this long to finish after SIGTERM, seconds."""


class Component(Protocol):
    """Something that runs inside ``smoe serve`` beside the scaler (e.g. the controller).
    ``alive()`` feeds the scaler's liveness: false only when the component is dead or wedged,
    never because a dependency of it fails."""

    def start(self, store: DecisionStore, registry: CollectorRegistry) -> None: ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class ServePlan:
    """Everything ``smoe serve`` needs, checked: pipelines with their decision files (None:
    in memory), listen host, ports (0: any free port), staleness in seconds, TLS or None."""

    pipelines: tuple[tuple[PipelineDAG, Path | None], ...]
    host: str
    grpc_port: int
    metrics_port: int
    staleness_s: float
    tls: TlsMaterial | None
    clock_skew_s: float = 30.0
    reflection: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", action="append", required=True, metavar="PIPELINE",
                        help="pipeline.yml to serve (repeat for several pipelines)")
    parser.add_argument("--config", metavar="CONFIG", help="config.yaml (default: built-in)")
    parser.add_argument("--decisions", action="append", metavar="PATH",
                        help="decision file per --pipeline (in order), or one directory of "
                             "<pipeline name>.json files; default: in memory only")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--grpc-port", type=int, metavar="PORT",
                        help="gRPC port for KEDA (default: scaler.grpc_port, 9090; 0: any)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="port of /metrics (default: scaler.metrics_port, 8080; 0: any)")
    parser.add_argument("--tls-cert", metavar="PEM", help="server certificate (turns on TLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="server private key")
    parser.add_argument("--tls-client-ca", metavar="PEM",
                        help="CA of client certificates: requires and verifies them (mTLS)")
    parser.add_argument("--prometheus", metavar="URL",
                        help="Prometheus the controller reads (default: metrics.prometheus_url)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the controller decides and logs, and applies nothing: the "
                             "scaler serves only what the decision files hold")
    parser.add_argument("--guards", metavar="PROFILE", default=None,
                        help="guard profile of the controller: production or physical "
                             "(default: the one policy.name runs under)")
    parser.add_argument("--reflection", action="store_true",
                        help="also serve gRPC server reflection (for grpcurl; off by default)")
    parser.add_argument("--scaler-only", action="store_true",
                        help="serve the decision files; run no controller")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM. Bad input: one line per problem on stderr, exit 2."""
    try:
        plan = plan_from_args(args)
        return serve(plan, components=() if args.scaler_only else _controllers(plan, args))
    except (ConfigError, PipelineError) as e:
        for line in e.lines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT


def plan_from_args(args: argparse.Namespace) -> ServePlan:
    """Check every input before anything starts.

    Raises:
        PipelineError: a pipeline file is missing or invalid.
        ConfigError: the config, a port, the decision paths or the TLS files are wrong.
    """
    from smoelib.pipeline.topology import build_dag
    from smoelib.scaler.tls import TlsMaterial
    from smoelib.settings import load_settings

    scaler = load_settings(args.config).scaler
    grpc_port = _port("--grpc-port", args.grpc_port, scaler.grpc_port)
    metrics_port = _port("--metrics-port", args.metrics_port, scaler.metrics_port)
    dags = [build_dag(config=p, validate=True, attach_metadata=True) for p in args.pipeline]
    names = [d.name for d in dags]
    if len(set(names)) != len(names):
        raise ConfigError([Problem("--pipeline", f"a pipeline name is given twice: {names}")],
                          source=_ARGS)
    paths = _decision_paths(args.decisions or [], names)
    tls = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError([Problem("--tls-cert", "TLS needs both --tls-cert and --tls-key")],
                              source=_ARGS)
        tls = TlsMaterial.from_files(cert=args.tls_cert, key=args.tls_key,
                                     client_ca=args.tls_client_ca)
    return ServePlan(tuple(zip(dags, paths, strict=True)), host=args.host, grpc_port=grpc_port,
                     metrics_port=metrics_port, staleness_s=scaler.staleness_s, tls=tls,
                     clock_skew_s=scaler.clock_skew_s, reflection=args.reflection)


def serve(plan: ServePlan, *, clock: Callable[[], float] = time.time,
          stop: threading.Event | None = None, components: Sequence[Component] = ()) -> int:
    """Run the scaler (and ``components``) until ``stop`` is set or SIGTERM/SIGINT arrives.

    Prints one line when serving: ``smoe serve: scaler on HOST:PORT, metrics on HOST:PORT``.

    Raises:
        ConfigError: a port cannot be bound.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    from smoelib.scaler.server import create_server, install_shutdown_signals
    from smoelib.scaler.store import DecisionStore

    stop = stop or threading.Event()
    store = DecisionStore(staleness_s=plan.staleness_s, clock=clock,
                          clock_skew_s=plan.clock_skew_s)
    for dag, path in plan.pipelines:
        error = store.add_pipeline(dag, decision_path=path)
        if error is not None:  # serve UNAVAILABLE (KEDA's fallback) until a good decision
            for line in error.lines():
                log.error("%s; pipeline %s answers UNAVAILABLE until a good decision arrives",
                          line, dag.name)
        if path is None:
            log.warning("pipeline %s: no --decisions, decisions are kept in memory only",
                        dag.name)
    registry = CollectorRegistry()
    try:
        server, port = create_server(f"{plan.host}:{plan.grpc_port}", store=store,
                                     registry=registry, tls=plan.tls,
                                     reflection=plan.reflection)
    except RuntimeError as e:
        raise _bind_error("--grpc-port", plan.host, plan.grpc_port, e) from e
    try:
        metrics_server, metrics_thread = start_http_server(
            plan.metrics_port, addr=plan.host, registry=registry)
    except OSError as e:
        server.stop(grace_s=0)
        raise _bind_error("--metrics-port", plan.host, plan.metrics_port, e) from e
    on_main = threading.current_thread() is threading.main_thread()
    restore = install_shutdown_signals(lambda _signum: stop.set()) if on_main else None
    started: list[Component] = []
    try:
        for component in components:
            component.start(store, registry)
            started.append(component)
        print(f"smoe serve: scaler on {plan.host}:{port}, metrics on {plan.host}:"
              f"{metrics_server.server_port}, pipelines {', '.join(store.pipelines())}",
              flush=True)
        live = True
        while not stop.wait(RELOAD_INTERVAL_S):
            for name in store.pipelines():
                store.reload_if_changed(name)
            dead = [type(c).__name__ for c in started if not c.alive()]
            if live == bool(dead):
                live = not dead
                server.set_liveness(live)
                if dead:
                    log.error("liveness NOT_SERVING: %s stopped ticking (dead or wedged); the "
                              "kubelet restarts the pod", ", ".join(dead))
                else:
                    log.info("liveness SERVING again")
    finally:
        for component in reversed(started):
            component.stop()
        server.stop(grace_s=SHUTDOWN_GRACE_S)
        metrics_server.shutdown()
        metrics_server.server_close()
        metrics_thread.join()
        if restore is not None:
            restore()
        log.info("smoe serve stopped")
    return EXIT_OK


def _controllers(plan: ServePlan, args: argparse.Namespace) -> list[Component]:
    """One controller per pipeline, joining the process (built before anything listens, so a
    bad policy checkpoint or an unreachable cluster is refused up front)."""
    from smoelib.control.controller import SMoEController
    from smoelib.errors import PermanentError
    from smoelib.settings import load_settings

    settings = load_settings(args.config)
    controllers = [SMoEController(dag, settings, prometheus_url=args.prometheus,
                                  dry_run=args.dry_run, log_interval=60.0,
                                  warmup_seconds=settings.control.warmup_s, guards=args.guards)
                   for dag, _path in plan.pipelines]
    check = getattr(controllers[0].source, "check_overrides", None)
    if check is not None and settings.metrics.queries:
        try:
            for note in check():
                log.warning("%s", note)
        except PermanentError as e:
            raise ConfigError([Problem("metrics.queries", str(e))],
                              source=args.config or _ARGS) from e
    return controllers


def _port(option: str, given: int | None, default: int) -> int:
    port = default if given is None else given
    if not 0 <= port <= 65535:
        raise ConfigError([Problem(option, f"must be a port number 0..65535, got {port}")],
                          source=_ARGS)
    return port


def _decision_paths(given: list[str], names: list[str]) -> list[Path | None]:
    if not given:
        return [None] * len(names)
    if len(given) == 1 and Path(given[0]).is_dir():
        return [Path(given[0]) / f"{name}.json" for name in names]
    if len(given) != len(names):
        raise ConfigError([Problem("--decisions", f"given {len(given)} times for {len(names)} "
                                   "pipelines: give one file per --pipeline, or one directory")],
                          source=_ARGS)
    paths = [Path(p) for p in given]
    for path in paths:
        if path.is_dir():
            raise ConfigError([Problem("--decisions", "is a directory; with several pipelines "
                                       "give one directory only, or one file each")],
                              source=str(path))
        if not path.parent.is_dir():
            raise ConfigError([Problem("--decisions", f"directory {path.parent} does not exist")],
                              source=str(path))
    return paths


def _bind_error(option: str, host: str, port: int, error: Exception) -> ConfigError:
    return ConfigError([Problem(option, f"cannot listen on {host}:{port} ({error})")],
                       source=_ARGS)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _parser = argparse.ArgumentParser(prog="smoe serve", description=__doc__)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
