"""A seconds-long run of ``smoe simulate`` and its bad-input path."""

from __future__ import annotations

from smoelib.cli import main


def test_simulate_prints_the_summary_and_writes_the_series(tmp_path, capsys):
    code = main(["simulate", "--pipeline", "examples/pipelines/bert-moe.yml", "--trace",
                 "conv-train", "--policy", "static", "--duration", "60", "--seed", "1",
                 "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for word in ("requests", "dropped", "P95", "SLO", "window violation rate", "cost",
                 "cold starts", "429s", "rollouts"):
        assert word in out
    assert (tmp_path / "windows.csv").read_text().startswith("t_s,requests")
    assert (tmp_path / "windows.png").stat().st_size > 1000


def test_simulate_bad_trace_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01 00:00:00.0,-1,2\n")
    code = main(["simulate", "--pipeline", "examples/pipelines/bert-moe.yml", "--trace",
                 str(bad), "--duration", "10", "--no-progress"])
    assert code == 2
    assert "row 1" in capsys.readouterr().err
