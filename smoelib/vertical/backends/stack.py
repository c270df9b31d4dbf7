"""``stack.yml`` -> the full ``FunctionDeployment`` the gateway's ``PUT /system/functions`` needs.

The gateway replaces a function's whole spec on PUT and its GET does not return env vars, so a
spec rebuilt from a GET would wipe the function's environment. The user's ``stack.yml`` (the
file ``faas-cli deploy`` reads) is the only complete source: image, ``fprocess``, environment
(``environment_file`` entries first, then ``environment``), labels, annotations, secrets,
constraints, requests and limits, read-only root filesystem. ``${VAR}`` substitution, which
faas-cli performs, is not: write the values out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smoelib.errors import ConfigError, Problem
from smoelib.pipeline.yamlsrc import YamlProblem, load

__all__ = ["load_stack"]


def load_stack(path: str | Path, functions: list[str], *, namespace: str
               ) -> dict[str, dict[str, Any]]:
    """Function name -> its ``FunctionDeployment`` (gateway JSON) for each of ``functions``.

    Raises:
        ConfigError: the file is unreadable, or a function is missing or has no image; every
            problem at once, each naming the function and the field.
    """
    try:
        src = load(Path(path))
    except YamlProblem as e:
        raise ConfigError([e.problem], source=str(path)) from None
    problems: list[Problem] = []
    declared = src.data.get("functions") if isinstance(src.data, Mapping) else None
    if not isinstance(declared, Mapping):
        raise ConfigError([Problem("functions", "stack.yml has no functions mapping")],
                          source=src.name)
    specs: dict[str, dict[str, Any]] = {}
    for name in functions:
        fn = declared.get(name)
        where = f"functions.{name}"
        if not isinstance(fn, Mapping):
            problems.append(Problem(where, "missing: the openfaas-gateway backend needs every "
                                    "function's full spec and refuses to PUT without it",
                                    src.line(("functions",))))
            continue
        if not fn.get("image"):
            problems.append(Problem(f"{where}.image", "required", src.line(("functions", name))))
            continue
        env: dict[str, str] = {}
        for i, env_file in enumerate(fn.get("environment_file") or ()):
            env.update(_env_file(Path(path).parent / str(env_file), f"{where}.environment_file"
                                 f"[{i}]", problems))
        env.update({str(k): _text(v) for k, v in (fn.get("environment") or {}).items()})
        spec: dict[str, Any] = {"service": name, "image": str(fn["image"]),
                                "namespace": str(fn.get("namespace") or namespace),
                                "envVars": env}
        if fn.get("fprocess"):
            spec["envProcess"] = str(fn["fprocess"])
        for key in ("constraints", "secrets"):
            if fn.get(key):
                spec[key] = [str(v) for v in fn[key]]
        for key in ("labels", "annotations"):
            if fn.get(key):
                spec[key] = {str(k): _text(v) for k, v in fn[key].items()}
        for key in ("requests", "limits"):
            if fn.get(key):
                spec[key] = {k: _text(fn[key][k]) for k in ("cpu", "memory") if k in fn[key]}
        if "readonly_root_filesystem" in fn:
            spec["readOnlyRootFilesystem"] = bool(fn["readonly_root_filesystem"])
        specs[name] = spec
    if problems:
        raise ConfigError(problems, source=src.name)
    return specs


def _env_file(path: Path, where: str, problems: list[Problem]) -> dict[str, str]:
    try:
        data = load(path).data
    except YamlProblem as e:
        problems.append(Problem(where, f"{path.name}: {e.problem.message}"))
        return {}
    env = data.get("environment") if isinstance(data, Mapping) else None
    if not isinstance(env, Mapping):
        problems.append(Problem(where, f"{path.name}: no environment mapping"))
        return {}
    return {str(k): _text(v) for k, v in env.items()}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
