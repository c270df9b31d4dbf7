"""smoe profile: measure an expert on this machine and write the ``profile`` block a pipeline uses.

Times a real expert FFN of the declared shape with torch (``d_model`` x ``d_ff``, 2 matrices:
up and down with a GELU between; 3: SwiGLU's gate, up and down) over batch sizes, on CPU (with
``--threads`` intra-op threads) or CUDA when present (``--device cuda``, timed with CUDA events
after a synchronise), in ``--dtype``; prints the table and the roofline-style fit ``max(flat,
per_token x n)``. Then times the handler and serialisation of a loopback HTTP call served the
way an expert function serves one (keep-alive, TCP_NODELAY, raw fp16 activations in and out):
the round trip at one token is the handler's ``call_ms``, the slope over payload size its
``serialise_ms_per_kb``. ``--out FILE`` writes both as YAML to paste under a pipeline's
``defaults.expert`` (or a stage): the simulator then serves that expert from the measured curve
(interpolated; beyond the largest batch measured, extrapolated along the last segment).
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from smoelib.errors import ConfigError, Problem

__all__ = ["add_arguments", "run", "time_ffn", "time_handler", "profile_block"]

_DTYPES = ("fp32", "bf16", "fp16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default=None,
                        help="take the expert shape from this pipeline.yml (its first expert, "
                             "or --stage's)")
    parser.add_argument("--stage", default=None, help="with --pipeline: the MoE stage")
    parser.add_argument("--d-model", type=int, default=768, help="model width (default 768)")
    parser.add_argument("--d-ff", type=int, default=3072, help="expert FFN width (default 3072)")
    parser.add_argument("--matrices", type=int, default=2, choices=(2, 3),
                        help="2: up and down (GELU); 3: gate, up, down (SwiGLU)")
    parser.add_argument("--dtype", default="fp32", choices=_DTYPES,
                        help="weights and activations (default fp32; bf16/fp16 on CUDA)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when present, else CPU")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--tokens", default="1,4,16,64,256,1024",
                        help="batch sizes to time, comma-separated")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per batch size")
    parser.add_argument("--no-handler", action="store_true",
                        help="skip the loopback HTTP handler timing")
    parser.add_argument("--out", default=None, help="write the profile block (YAML) here")


def run(args: argparse.Namespace) -> int:
    d_model, d_ff, matrices = args.d_model, args.d_ff, args.matrices
    if args.pipeline:
        d_model, d_ff, matrices = _shape_from(args.pipeline, args.stage)
    try:
        tokens = sorted({int(t) for t in args.tokens.split(",") if t.strip()})
    except ValueError:
        raise ConfigError([Problem("--tokens", f"must be integers, got {args.tokens!r}")]
                          ) from None
    if len(tokens) < 2 or tokens[0] < 1:
        raise ConfigError([Problem("--tokens", "needs at least two batch sizes >= 1")])
    for flag, v in (("--d-model", d_model), ("--d-ff", d_ff), ("--threads", args.threads),
                    ("--repeats", args.repeats)):
        if v < 1:
            raise ConfigError([Problem(flag, f"must be >= 1, got {v}")])
    device = _device(args.device)
    if device == "cpu" and args.dtype != "fp32":
        print(f"note: {args.dtype} on CPU runs far slower than fp32 in torch; profile what your "
              "functions run")
    ms = time_ffn(d_model, d_ff, matrices, tokens, dtype=args.dtype, device=device,
                  threads=args.threads, repeats=args.repeats)
    flat, per_token = fit(tokens, ms)
    print(f"expert {d_model} x {d_ff} ({matrices} matrices), {args.dtype} on {device}"
          + (f" ({args.threads} thread{'s' if args.threads > 1 else ''})"
             if device == "cpu" else ""))
    print(f"{'tokens':>8} {'ms (median)':>12} {'us / token':>11}")
    for n, t in zip(tokens, ms, strict=True):
        print(f"{n:>8} {t:>12.4f} {1000 * t / n:>11.2f}")
    print(f"fit: max({flat:.4f} ms, {per_token:.5f} ms x tokens)")
    handler = None
    if not args.no_handler:
        handler = time_handler(d_model)
        print(f"handler (loopback HTTP, keep-alive, TCP_NODELAY, fp16 activations): "
              f"{handler['call_ms']:.4f} ms a call, {handler['serialise_ms_per_kb']:.6f} ms "
              f"per KiB")
    block = profile_block(tokens, ms, handler, header=(
        f"smoe profile: {d_model} x {d_ff} x {matrices} {args.dtype} on {device}"
        + (f", {args.threads} threads" if device == "cpu" else "")))
    if args.out:
        Path(args.out).write_text(block)
        print(f"wrote {args.out}: paste it under a pipeline's defaults.expert (or a stage)")
    else:
        print(block, end="")
    return 0


def _shape_from(path: str, stage: str | None) -> tuple[int, int, int]:
    from smoelib.pipeline.topology import build_dag

    dag = build_dag(path)
    nodes = dag.moe_layers.get(stage) if stage else next(iter(dag.moe_layers.values()), None)
    if not nodes:
        where = f"stage {stage!r}" if stage else "an MoE stage"
        raise ConfigError([Problem("--stage", f"{path} has no {where}")])
    spec = dag.spec(nodes[0])
    if not spec.d_model:
        raise ConfigError([Problem("--pipeline", f"{path}: {nodes[0]} declares no shape")])
    return spec.d_model, spec.d_ff, spec.matrices


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError([Problem("--device", "cuda requested but torch sees no CUDA device")])
    return name


def time_ffn(d_model: int, d_ff: int, matrices: int, tokens: list[int], *, dtype: str,
             device: str, threads: int, repeats: int) -> list[float]:
    """Median milliseconds of one expert FFN forward pass per batch size."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _time_ffn(d_model, d_ff, matrices, tokens, dtype=dtype, device=device,
                         repeats=repeats)
    finally:
        torch.set_num_threads(before)


def _time_ffn(d_model: int, d_ff: int, matrices: int, tokens: list[int], *, dtype: str,
              device: str, repeats: int) -> list[float]:
    import torch

    kind = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(d_model, d_ff, generator=g).to(device, kind) * 0.02
         for _ in range(matrices - 1)]
    down = torch.randn(d_ff, d_model, generator=g).to(device, kind) * 0.02

    def ffn(x):
        if matrices == 3:
            return (torch.nn.functional.silu(x @ w[0]) * (x @ w[1])) @ down
        return torch.nn.functional.gelu(x @ w[0]) @ down

    out = []
    with torch.inference_mode():
        for n in tokens:
            x = torch.randn(n, d_model, generator=g).to(device, kind)
            for _ in range(3):  # warm up
                ffn(x)
            times = []
            for _ in range(repeats):
                if device == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                        enable_timing=True)
                    torch.cuda.synchronize()
                    start.record()
                    ffn(x)
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    ffn(x)
                    times.append((time.perf_counter() - t0) * 1000.0)
            out.append(statistics.median(times))
    return out


def fit(tokens: list[int], ms: list[float]) -> tuple[float, float]:
    """``(flat_ms, per_token_ms)`` of ``max(flat, per_token x n)``: the flat part is the
    smallest batch's time, the slope the largest batch's time per token."""
    return float(ms[0]), float(ms[-1] / tokens[-1])


def time_handler(d_model: int, *, sizes: tuple[int, ...] = (1, 128, 512), repeats: int = 200
                 ) -> dict[str, float]:
    """Round trips of a loopback expert call carrying ``n`` fp16 tokens each way: the
    handler's per-call time (the smallest payload's median) and the serialisation per KiB
    (the slope of the median over the payload's KiB in and out)."""

    class Expert(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - the http.server hook
            body = self.rfile.read(int(self.headers["Content-Length"]))
            x = np.frombuffer(body, dtype=np.float16).reshape(-1, d_model)
            reply = (x * np.float16(1.0)).tobytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            return

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().server_bind()

    server = Server(("127.0.0.1", 0), Expert)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        medians = []
        for n in sizes:
            payload = np.zeros((n, d_model), np.float16).tobytes()
            times = []
            for i in range(repeats + 10):
                t0 = time.perf_counter()
                conn.request("POST", "/", body=payload,
                             headers={"Content-Type": "application/octet-stream"})
                conn.getresponse().read()
                if i >= 10:
                    times.append((time.perf_counter() - t0) * 1000.0)
            medians.append(statistics.median(times))
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
    kib = np.array(sizes, float) * d_model * 2 * 2 / 1024.0  # in and out
    slope = float(np.polyfit(kib, medians, 1)[0])
    return {"call_ms": float(medians[0]), "serialise_ms_per_kb": max(slope, 0.0)}


def profile_block(tokens: list[int], ms: list[float], handler: dict[str, float] | None, *,
                  header: str) -> str:
    """The YAML a pipeline takes under ``defaults.expert`` (or a stage)."""
    lines = [f"# {header}",
             "# the FFN time of a batch of that many tokens (at GPU share 1, or on one "
             "worker's cores)",
             f"profile: {{tokens: [{', '.join(str(t) for t in tokens)}], "
             f"ms: [{', '.join(f'{m:.5g}' for m in ms)}]}}"]
    if handler is not None:
        lines.append(f"handler: {{call_ms: {handler['call_ms']:.5g}, "
                     f"serialise_ms_per_kb: {handler['serialise_ms_per_kb']:.5g}}}")
    return "\n".join(lines) + "\n"
