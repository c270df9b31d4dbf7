"""The stubs the package ships are what ``make proto`` generates from its ``.proto`` with the
pinned grpcio-tools (committed, so the wheel carries them and grpcio-tools is no run-time
dependency). Checks the installed package: the checkout in development, the wheel in the
fresh-install test."""

from __future__ import annotations

from pathlib import Path

from grpc_tools import protoc

import smoelib.keda_proto

PACKAGE = Path(smoelib.keda_proto.__file__).resolve().parent
INCLUDE = PACKAGE.parents[1]  # the directory holding smoelib/
PROTO = "smoelib/keda_proto/externalscaler.proto"


def test_make_proto_leaves_the_committed_stubs_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(INCLUDE)
    code = protoc.main(["grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", PROTO])
    assert code == 0
    for name in ("externalscaler_pb2.py", "externalscaler_pb2_grpc.py"):
        fresh = (tmp_path / "smoelib" / "keda_proto" / name).read_bytes()
        shipped = (PACKAGE / name).read_bytes()
        assert fresh == shipped, f"regenerate with `make proto` and commit {name}"
