"""The work of one request: the passes it makes through the pipeline. Pure.

A trace row gives ``C`` context and ``G`` generated tokens (research note "workload", 1):

- encoder: one pass over ``min(C, max_seq)`` tokens;
- decoder: a prefill over ``P = min(C, max_seq - min(G, decode_cap))`` tokens (at least 1),
  then ``min(G, decode_cap, max_seq - P)`` decode passes of 1 token;
- encoder-decoder: an encoder pass over ``min(C, max_seq)`` tokens through the encoder
  stages, then ``min(G, decode_cap)`` decoder passes of 1 token through the decoder stages.

With ``prefill_chunk`` > 0 the prefill is split into chunks of at most that many tokens, each
its own pass (chunked prefill). The prefill (or encoder) pass yields the first token: TTFT ends
when its last chunk does; TPOT is the mean time per output token after it,
``(end - first token) / decode passes`` (vLLM's ``request_time_per_output_token``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["prefill_tokens", "decode_passes", "chunks", "n_chunks", "passes_per_request",
           "expected_calls"]


def prefill_tokens(dag, context, generated):
    """Tokens of each request's prefill (or encoder) pass (arrays broadcast)."""
    c = np.asarray(context, dtype=np.int64)
    if dag.kind == "decoder":
        g = np.asarray(generated, dtype=np.int64)
        room = dag.max_seq_tokens - np.minimum(g, dag.decode_cap)
        return np.maximum(np.minimum(c, room), 1)
    return np.maximum(np.minimum(c, dag.max_seq_tokens), 1)


def decode_passes(dag, context, generated):
    """Decode passes of each request (0 for an encoder pipeline)."""
    g = np.asarray(generated, dtype=np.int64)
    if dag.kind == "encoder":
        return np.zeros_like(np.asarray(context, dtype=np.int64))
    capped = np.minimum(g, dag.decode_cap)
    if dag.kind == "decoder":
        room = dag.max_seq_tokens - prefill_tokens(dag, context, generated)
        return np.maximum(np.minimum(capped, room), 0)
    return capped


def chunks(dag, tokens: int) -> list[int]:
    """The prefill chunks of a ``tokens``-long prefill."""
    size = dag.prefill_chunk
    if size <= 0 or tokens <= size:
        return [int(tokens)]
    full, rest = divmod(int(tokens), size)
    return [size] * full + ([rest] if rest else [])


def n_chunks(dag, tokens):
    """How many chunks prefills of ``tokens`` tokens make (arrays broadcast; at least 1)."""
    t = np.asarray(tokens, dtype=np.int64)
    if dag.prefill_chunk <= 0:
        return np.ones_like(t)
    return np.maximum(-(-t // dag.prefill_chunk), 1)


def passes_per_request(dag, context, generated):
    """Passes of each request through the pipeline: prefill chunks plus decode passes."""
    p = prefill_tokens(dag, context, generated)
    return n_chunks(dag, p) + decode_passes(dag, context, generated)


def expected_calls(dag, context, generated) -> np.ndarray:
    """Calls each request makes (arrays broadcast): per pass one call per segment stage
    (and join) it visits, a decode pass ``min(top_k, experts)`` per MoE layer, a prefill chunk
    of ``T`` tokens the experts it touches, ``E (1 - (1 - k / E) ** T)`` in expectation under
    uniform routing (exact once every expert is touched; skewed routing touches fewer). The
    check that a simulation serves every call, decode passes uncollapsed."""
    p = np.asarray(prefill_tokens(dag, context, generated), dtype=np.int64)
    d = np.asarray(decode_passes(dag, context, generated), dtype=np.int64)
    parts = dag.stage_parts
    first = [st for st in dag.stages if dag.kind != "encoder-decoder" or parts[st] == "encoder"]
    later = [st for st in dag.stages if dag.kind != "encoder-decoder" or parts[st] == "decoder"]
    layers = dag.moe_layers

    def per_chunk(stages, tokens):
        out = np.zeros(np.shape(tokens))
        for st in stages:
            if st not in layers:
                out = out + 1
                continue
            e = len(layers[st])
            k = min(dag.spec(layers[st][0]).top_k, e)
            out = out + e * (1.0 - (1.0 - k / e) ** np.asarray(tokens, dtype=float))
        return out

    size = dag.prefill_chunk
    if size <= 0:
        prefill = per_chunk(first, p)
    else:
        full, rest = np.divmod(p, size)
        prefill = full * per_chunk(first, size) + np.where(rest > 0, per_chunk(first, rest), 0)
    return prefill + d * per_chunk(later, 1)
