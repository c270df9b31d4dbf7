"""Nothing at run or test time reads outside the repository: a user's clone has no folder
beside it (the schemas the tests need are vendored under tests/schemas)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"""(["']\.\.["']\s*/|\.parent\s*/\s*["']shared|["']\.\./shared)""")


def test_no_code_or_test_reaches_outside_the_repository():
    offenders = []
    for folder in ("smoelib", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if OUTSIDE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert offenders == []


def test_the_vendored_schemas_are_there():
    for name in ("keda.sh_scaledobjects.yaml", "openfaas-gateway.openapi.yml", "README.md"):
        assert (ROOT / "tests" / "schemas" / name).stat().st_size > 1000
