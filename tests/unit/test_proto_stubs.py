"""The committed gRPC stubs are what ``make proto`` generates from the committed ``.proto``
with the pinned grpcio-tools (they ship in the wheel; grpcio-tools is no run-time
dependency)."""

from __future__ import annotations

from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO = "smoelib/keda_proto/externalscaler.proto"


def test_make_proto_leaves_the_committed_stubs_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = protoc.main(["grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", PROTO])
    assert code == 0
    for name in ("externalscaler_pb2.py", "externalscaler_pb2_grpc.py"):
        fresh = (tmp_path / "smoelib" / "keda_proto" / name).read_bytes()
        committed = (ROOT / "smoelib" / "keda_proto" / name).read_bytes()
        assert fresh == committed, f"regenerate with `make proto` and commit {name}"
