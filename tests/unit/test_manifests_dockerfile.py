"""The Dockerfile's rules, read from its text (Docker cannot run in CI): multi-stage, CPU torch,
a numeric non-root USER in the final stage before an exec-form ``smoe serve`` ENTRYPOINT."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for parts in (entry.split(None, 1) for entry in logical)]


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, args in instructions():
        if op == "FROM":
            result.append([])
        if result:
            result[-1].append((op, args))
    return result


def test_multi_stage_with_runtime_copying_from_builder():
    all_stages = stages()
    assert len(all_stages) >= 2
    names = [re.search(r"\bAS\s+(\S+)", s[0][1], re.I) for s in all_stages]
    assert names[0] and names[0].group(1) == "builder"
    final = all_stages[-1]
    assert any(op == "COPY" and "--from=builder" in args for op, args in final)


def test_final_stage_runs_as_numeric_non_root_user_and_entrypoint_is_smoe_serve():
    final = stages()[-1]
    users = [(i, args.split(":")[0]) for i, (op, args) in enumerate(final) if op == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    last_user_at, uid = users[-1]
    assert uid.isdigit() and int(uid) == 65532
    entry = [(i, args) for i, (op, args) in enumerate(final) if op == "ENTRYPOINT"]
    assert entry and entry[-1][0] > last_user_at
    assert json.loads(entry[-1][1]) == ["smoe", "serve"]  # exec form: no shell as PID 1
    assert not any(op == "RUN" for op, _ in final[last_user_at:])


def test_builder_installs_cpu_torch_and_checks_the_bundled_policy():
    builder = stages()[0]
    runs = " ".join(args for op, args in builder if op == "RUN")
    assert re.search(r"pip install \"?torch==\$\{TORCH_VERSION\}\"? --index-url "
                     r"https://download\.pytorch\.org/whl/cpu", runs)
    assert "grpc_tools.protoc" in runs
    assert "policy/pretrained/default.pt" in runs


def test_only_public_hosts_are_named():
    hosts = set(re.findall(r"https?://([^/\s\"']+)", (ROOT / "Dockerfile").read_text()))
    assert hosts <= {"download.pytorch.org"}


def test_dockerignore_keeps_the_context_to_the_package():
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!smoelib/"} <= set(lines)
