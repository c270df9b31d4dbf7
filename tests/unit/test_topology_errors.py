"""Malformed pipelines: each gives exactly the expected one-line problems, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smoelib.errors import PipelineError, SmoeError
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[2]

OK_HEAD = "name: p\nslo_ms: 50\n"

# (case id, file text, expected problem lines with {f} standing for the file path)
CASES = [
    ("yaml-syntax", "name: p\nslo_ms: [50\nstages: []\n",
     ["{f}:3: YAML syntax error: expected ',' or ']', but got ':'"]),
    ("empty-file", "", ["{f}: empty file: expected a mapping with name, slo_ms and stages"]),
    ("not-a-mapping", "- a\n- b\n", ["{f}: must be a mapping, got a list"]),
    ("unknown-top-key", OK_HEAD + "stages: [{id: a}]\nreplica: 3\n",
     ["{f}:4: replica: unknown key 'replica'; expected one of accelerator, decode_cap, "
      "defaults, description, kind, max_seq_tokens, name, namespace, prefill_chunk, rate_scale, "
      "slo, slo_ms, stages"]),
    ("unknown-stage-key", OK_HEAD + "stages:\n  - {id: a, experts: 2, topk: 1}\n",
     ["{f}:4: stage 'a'.topk: unknown key 'topk'; expected one of after, concurrency, cpu, "
      "experts, function, gpu_memory_mb, gpu_share, handler, id, kind, max_batch, memory_mb, "
      "overrides, parallelism, part, profile, replicas, shape, top_k, weights_mb"]),
    ("missing-name", "slo_ms: 5\nstages: [{id: a}]\n", ["{f}: missing required key 'name'"]),
    ("missing-slo", "name: p\nstages: [{id: a}]\n",
     ["{f}: missing required key 'slo' (slo: {ttft_ms: ..., tpot_ms: ..., attainment: 0.99}; "
      "an encoder pipeline may give slo: {ttft_ms: ...})"]),
    ("decoder-old-slo", "name: p\nkind: decoder\nslo_ms: 5\nstages: [{id: a}]\n",
     ["{f}:3: slo_ms: a decoder pipeline states its SLO per pass: write slo: {ttft_ms: ..., "
      "tpot_ms: ..., attainment: 0.99} instead of slo_ms"]),
    ("encoder-tpot", "name: p\nkind: encoder\nslo: {ttft_ms: 5, tpot_ms: 1}\nstages: [{id: a}]\n",
     ["{f}:3: slo.tpot_ms: an encoder pipeline has TTFT only: it generates no tokens (declare "
      "kind: decoder to decode)"]),
    ("decoder-no-tpot", "name: p\nkind: decoder\nslo: {ttft_ms: 5}\nstages: [{id: a}]\n",
     ["{f}:3: slo: missing required key 'tpot_ms' (a decoder pipeline decodes)"]),
    ("bad-kind", "name: p\nkind: seq2seq\nslo_ms: 5\nstages: [{id: a}]\n",
     ["{f}:2: kind: must be one of encoder, decoder, encoder-decoder, got 'seq2seq'"]),
    ("bad-accelerator", OK_HEAD + "accelerator: tpu\nstages: [{id: a}]\n",
     ["{f}:3: accelerator: must be one of h100, h800, a100, l4, cpu, got 'tpu'"]),
    ("bad-dtype", OK_HEAD + "stages:\n  - {id: a, experts: 2, shape: {dtype: int4}}\n",
     ["{f}:4: stage 'a'.shape.dtype: must be one of fp32, bf16, fp16, fp8, got 'int4'"]),
    ("curve-lengths", OK_HEAD + "stages:\n  - {id: a, profile: {tokens: [1, 8], ms: [1, 2, 3]}}\n",
     ["{f}:4: stage 'a'.profile.ms: has 3 values for 2 batch sizes in 'tokens'"]),
    ("curve-and-line", OK_HEAD + "stages:\n  - {id: a, profile: {tokens: [1, 8], ms: [1, 2], "
     "base_ms: 1}}\n",
     ["{f}:4: stage 'a'.profile: give either base_ms/per_token_ms or a measured curve "
      "tokens/ms, not both"]),
    ("part-in-decoder", "name: p\nkind: decoder\nslo: {ttft_ms: 5, tpot_ms: 1}\n"
     "stages: [{id: a, part: decoder}]\n",
     ["{f}:4: stage 'a'.part: 'part' is only allowed in an encoder-decoder pipeline"]),
    ("missing-stages", "name: p\nslo_ms: 5\n", ["{f}: missing required key 'stages'"]),
    ("empty-stages", OK_HEAD + "stages: []\n", ["{f}:3: stages: must not be empty"]),
    ("duplicate-id", OK_HEAD + "stages:\n  - {id: a}\n  - {id: a}\n",
     ["{f}:5: stage 'a'.id: duplicate stage id 'a' (first at stages[0])"]),
    ("unknown-after", OK_HEAD + "stages:\n  - {id: a}\n  - {id: b, after: [zz]}\n",
     ["{f}:5: stage 'b'.after: unknown stage 'zz'"]),
    ("cycle", OK_HEAD + "stages:\n  - {id: a, after: [b]}\n  - {id: b, after: [a]}\n",
     ["{f}:4: stage 'a'.after: cycle through 'after': a -> b -> a"]),
    ("zero-experts", OK_HEAD + "stages:\n  - {id: m, kind: moe, experts: 0}\n",
     ["{f}:4: stage 'm'.experts: must be > 0, got 0"]),
    ("top-k-above-experts", OK_HEAD + "stages:\n  - {id: m, experts: 2, top_k: 3}\n",
     ["{f}:4: stage 'm'.top_k: top_k 3 is above the 2 experts of the stage"]),
    ("negative-cpu", OK_HEAD + "defaults:\n  expert: {cpu: -1}\nstages: [{id: m, experts: 2}]\n",
     ["{f}:4: defaults.expert.cpu: must be > 0, got -1"]),
    ("zero-memory", OK_HEAD + "stages:\n  - {id: m, experts: 2, memory_mb: 0}\n",
     ["{f}:4: stage 'm'.memory_mb: must be > 0, got 0"]),
    ("zero-slo", "name: p\nslo_ms: 0\nstages: [{id: a}]\n", ["{f}:2: slo_ms: must be > 0, got 0"]),
    ("gpu-share-above-one", OK_HEAD + "stages:\n  - {id: m, experts: 2, gpu_share: 1.5}\n",
     ["{f}:4: stage 'm'.gpu_share: must be within [0, 1], got 1.5"]),
    ("min-above-max", OK_HEAD + "stages:\n  - {id: m, experts: 2, replicas: {min: 5, max: 2}}\n",
     ["{f}:4: stage 'm'.replicas: min replicas 5 is above max replicas 2"]),
    ("name-not-dns", "name: My_Pipe\nslo_ms: 5\nstages: [{id: a}]\n",
     ["{f}:1: name: pipeline name 'My_Pipe' is not a DNS label (lowercase letters, digits and "
      "'-', starting and ending alphanumeric)"]),
    ("name-too-long", f"name: {'p' * 25}\nslo_ms: 5\nstages: [{{id: a}}]\n",
     [f"{{f}}:1: name: pipeline name '{'p' * 25}' is 25 characters; the limit is 24"]),
    ("stage-id-too-long", OK_HEAD + f"stages: [{{id: {'s' * 17}}}]\n",
     [f"{{f}}:3: stage '{'s' * 17}'.id: stage id '{'s' * 17}' is 17 characters; "
      "the limit is 16"]),
    ("override-missing-expert", OK_HEAD +
     "stages:\n  - {id: m, experts: 2, overrides: {5: {cpu: 2}}}\n",
     ["{f}:4: stage 'm'.overrides[5]: expert index 5 does not exist "
      "(the stage has experts 0..1)"]),
    ("wrong-type-slo", "name: p\nslo_ms: fast\nstages: [{id: a}]\n",
     ["{f}:2: slo_ms: must be a number, got a string"]),
    ("wrong-type-bool-concurrency",
     OK_HEAD + "stages:\n  - {id: m, experts: 2, concurrency: true}\n",
     ["{f}:4: stage 'm'.concurrency: must be an integer, got a boolean"]),
    ("wrong-type-after", OK_HEAD + "stages:\n  - {id: a}\n  - {id: b, after: a}\n",
     ["{f}:5: stage 'b'.after: must be a list of stage ids"]),
    ("experts-on-segment", OK_HEAD + "stages:\n  - {id: a, kind: segment, experts: 3}\n",
     ["{f}:4: stage 'a'.experts: 'experts' is only allowed on an MoE stage"]),
    ("bad-kind", OK_HEAD + "stages:\n  - {id: a, kind: dense}\n",
     ["{f}:4: stage 'a'.kind: must be 'moe' or 'segment', got 'dense'"]),
    ("parallelism-above-concurrency", OK_HEAD +
     "stages:\n  - {id: m, experts: 2, concurrency: 2, parallelism: 4}\n",
     ["{f}:4: stage 'm'.parallelism: parallelism 4 is above concurrency 2"]),
    ("duplicate-yaml-key", "name: p\nname: q\nslo_ms: 5\nstages: [{id: a}]\n",
     ["{f}:2: name: duplicate key"]),
    ("bad-template", OK_HEAD + "defaults:\n  expert: {function: '{model}-{index}'}\n"
     "stages: [{id: m, experts: 2}]\n",
     ["{f}:4: defaults.expert.function: unknown placeholder {model} in '{model}-{index}'; "
      "use {pipeline}, {stage}, {index}"]),
    ("function-too-long",
     OK_HEAD + "stages:\n  - {id: m, experts: 1, function: " + "f" * 55 + "}\n",
     ["{f}:4: stage 'm'.function: function name '" + "f" * 55 + "' is 55 characters; "
      "the limit is 54"]),
    ("not-utf8", b"name: \xff\xfe\n", ["{f}: not UTF-8 text (byte 6)"]),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES],
                         ids=[c for c, _, _ in CASES])
def test_malformed_pipeline_reports_exact_lines(tmp_path: Path, text, expected):
    path = tmp_path / "pipeline.yml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(PipelineError) as info:
        build_dag(config=str(path))
    assert info.value.lines() == [line.replace("{f}", str(path)) for line in expected]
    assert isinstance(info.value, ValueError) and isinstance(info.value, SmoeError)


def test_at_least_twenty_distinct_cases():
    assert len({c for c, _, _ in CASES}) >= 20


def test_missing_file(tmp_path: Path):
    with pytest.raises(PipelineError) as info:
        build_dag(config=str(tmp_path / "nope.yml"))
    assert info.value.lines() == [f"{tmp_path / 'nope.yml'}: no such file"]


def test_huge_file_refused_before_parsing(tmp_path: Path):
    path = tmp_path / "huge.yml"
    path.write_text(OK_HEAD + "description: '" + "x" * (5 * 1024 * 1024) + "'\n")
    with pytest.raises(PipelineError) as info:
        build_dag(config=str(path))
    (line,) = info.value.lines()
    assert line == f"{path}: larger than 4194304 bytes: not read"


def test_alias_bomb_refused(tmp_path: Path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    path = tmp_path / "bomb.yml"
    path.write_text("\n".join(levels) + "\n")
    with pytest.raises(PipelineError) as info:
        build_dag(config=str(path))
    assert info.value.lines() == [f"{path}: document expands past 100000 nodes"]


def test_every_problem_reported_at_once(tmp_path: Path):
    path = tmp_path / "p.yml"
    path.write_text("name: Bad_Name\nslo_ms: -3\nstages:\n"
                    "  - {id: a, experts: 2, top_k: 3}\n  - {id: b, after: [zz]}\n")
    with pytest.raises(PipelineError) as info:
        build_dag(config=str(path))
    assert len(info.value.lines()) == 4


def test_validate_false_skips_semantics_but_refuses_unparseable():
    loose = {"name": "Not_A_Label", "slo_ms": 5,
             "stages": [{"id": "m", "experts": 2, "top_k": 3, "gpu_share": 7}]}
    dag = build_dag(loose, validate=False)
    assert dag.experts == ("m/e0", "m/e1")
    with pytest.raises(PipelineError):
        build_dag({"name": "p", "slo_ms": 5, "stages": [{"id": "m", "experts": "two"}]},
                  validate=False)
    with pytest.raises(PipelineError):
        build_dag({"name": "p", "slo_ms": 5,
                   "stages": [{"id": "a", "after": ["b"]}, {"id": "b", "after": ["a"]}]},
                  validate=False)


def test_cli_validate_prints_one_line_per_problem_and_exits_2(tmp_path: Path):
    path = tmp_path / "p.yml"
    path.write_text(textwrap.dedent("""\
        name: p
        slo_ms: 5
        stages:
          - {id: m, experts: 0}
          - {id: n, after: [q]}
        """))
    proc = subprocess.run([sys.executable, "-m", "smoelib.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"error: {path}:4: stage 'm'.experts: must be > 0, got 0",
        f"error: {path}:5: stage 'n'.after: unknown stage 'q'",
    ]
    assert "Traceback" not in proc.stderr


def _validate(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "smoelib.cli", "validate", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_validate_refuses_what_is_not_a_regular_file_without_reading_it(tmp_path):
    """/dev/zero reported size 0 and was read until MemoryError; a FIFO hung."""
    fifo = tmp_path / "pipeline.yml"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        proc = _validate(path, timeout=30)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"error: {path}: not a regular file (a FIFO, a device or a socket is never read)"]


def test_a_huge_yaml_list_is_refused_before_its_python_objects_exist(tmp_path):
    """A 2.2 MB list of 1.1 M items took 39 s and 1 GB before it was refused."""
    import time

    path = tmp_path / "huge.yml"
    path.write_text("name: x\nslo_ms: 1\nstages: [" + "1," * 1_100_000 + "1]\n")
    assert path.stat().st_size > 2_000_000
    started = time.monotonic()
    proc = subprocess.run(
        # VmHWM: this process's peak memory (ru_maxrss would carry pytest's across exec)
        [sys.executable, "-c", "import re, sys; from smoelib.cli import main; "
         "code = main(['validate', sys.argv[1]]); "
         "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1], "
         "file=sys.stderr); sys.exit(code)", str(path)], capture_output=True, text=True,
        timeout=60)
    elapsed = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[0] == (
        f"error: {path}: document has more than 100000 nodes")
    assert int(lines[1]) < 400_000  # KiB: far from the gigabyte it used to take
    assert elapsed < 20, elapsed


def test_validate_refuses_what_serve_refuses(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("scaler:\n  grpc_port: 70000\nmetrics:\n  queries:\n"
                      "    no_such_template: up\n")
    proc = _validate(str(ROOT / "examples" / "pipelines" / "bert-moe.yml"), "--config",
                     str(config))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"error: {config}:2: scaler.grpc_port: must be a port number 0..65535, " \
                       "got 70000"
    assert len(lines) == 1  # the settings tree stops first; then:
    config.write_text("metrics:\n  queries:\n    no_such_template: up\n")
    lines = _validate(str(ROOT / "examples" / "pipelines" / "bert-moe.yml"), "--config",
                      str(config)).stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {config}: metrics.queries.no_such_template: unknown template; known: ")
