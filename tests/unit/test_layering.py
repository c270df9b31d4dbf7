"""The layering rules of STYLE.md, checked on every import in the package (``make lint`` runs it).

- torch only under ``smoelib/policy/``;
- network libraries only where the design puts I/O: ``metrics.py``, ``scaler/``, the vertical
  backends, the simulator's exporter, ``instrument.py``, and composition roots (CLI modules);
- the pure core (topology, model, guards, the simulator, the vertical planner) imports neither.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "smoelib"

TORCH = {"torch"}
NETWORK = {"grpc", "requests", "urllib3", "urllib.request", "http.client", "http.server",
           "socket", "socketserver", "kubernetes", "prometheus_api_client", "aiohttp", "httpx",
           "prometheus_client"}

TORCH_ALLOWED = ["policy/*", "policy/**/*"]
NETWORK_ALLOWED = ["metrics.py", "instrument.py", "controller.py", "scaler/*", "vertical/backend*",
                   "vertical/kubernetes*", "vertical/gateway*", "vertical/cli.py",
                   "vertical/factory.py",
                   "sim/exporter.py", "sim/cli.py", "cli.py", "commands/*", "demo.py",
                   "embedded.py",
                   "keda_proto/*"]
PURE = ["topology.py", "_dag_builder.py", "pipeline_schema.py", "model.py", "guards.py",
        "settings.py", "settings_base.py", "errors.py", "yamlsrc.py", "decisions.py",
        "sim/*", "vertical/planner*", "vertical/safety*"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def matches(name: str, roots: set[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def allowed(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch(rel, p) for p in patterns)


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if "_pb2" in rel:
            continue
        yield rel, imported_modules(path)


def test_torch_only_in_policy():
    offenders = [(rel, sorted(n for n in names if matches(n, TORCH)))
                 for rel, names in modules()
                 if not allowed(rel, TORCH_ALLOWED) and any(matches(n, TORCH) for n in names)]
    assert offenders == []


def test_network_only_at_the_edges():
    offenders = [(rel, sorted(n for n in names if matches(n, NETWORK)))
                 for rel, names in modules()
                 if not allowed(rel, NETWORK_ALLOWED) and any(matches(n, NETWORK) for n in names)]
    assert offenders == []


def test_pure_core_imports_no_io_library():
    io_roots = NETWORK | TORCH
    offenders = []
    for rel, names in modules():
        if allowed(rel, PURE) and not allowed(rel, ["sim/exporter.py", "sim/cli.py"]):
            bad = sorted(n for n in names if matches(n, io_roots))
            if bad:
                offenders.append((rel, bad))
    assert offenders == []


def test_the_check_sees_the_package():
    rels = [rel for rel, _ in modules()]
    assert "topology.py" in rels and "cli.py" in rels
