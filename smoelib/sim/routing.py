"""Token routing: how many tokens of each request reach each expert of each MoE layer.

Per layer, expert popularity is ``softmax(sigma * z)``: ``z`` is a standard normal vector per
layer, and ``sigma`` is solved per layer so that the routing Gini equals the configured target
(0.1-0.4 on real text, research brief "algorithms" 5.2). ``z`` drifts as a stationary AR(1) on a
fixed time grid (slow drift) and is reshuffled at Poisson times (sudden shifts). A request with
``T`` context tokens (clipped to ``max_seq_tokens``) sends ``T * top_k`` token slots to a layer,
drawn multinomially (each expert's count clipped to ``T``, as a token picks distinct experts).
With affinity ``a > 0``, the next layer's probabilities are ``(1 - a) p + a * (c A)``, where ``c``
are the request's shares in the previous layer and ``A`` a sparse row-stochastic preference.

Common random numbers: routing draws come from their own stream, in fixed blocks of requests
(one child seed per block), so every policy sees the same routing for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RoutingModel", "RoutingParams", "gini", "solve_sigma"]

_BLOCK = 256


@dataclass(frozen=True)
class RoutingParams:
    """Units: ``drift_step_s`` and ``drift_time_s`` seconds, ``shift_every_s`` mean seconds
    between sudden shifts (0: never)."""

    gini: float = 0.25
    drift_step_s: float = 10.0
    drift_time_s: float = 600.0
    shift_every_s: float = 900.0
    affinity: float = 0.0


def gini(shares: np.ndarray) -> np.ndarray:
    """Gini coefficient of each row of ``shares`` (0 uniform, -> 1 concentrated)."""
    x = np.sort(np.atleast_2d(shares), axis=-1)
    n = x.shape[-1]
    i = np.arange(1, n + 1)
    return (2 * (x * i).sum(-1) / (n * x.sum(-1))) - (n + 1) / n


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def solve_sigma(z: np.ndarray, target: float) -> np.ndarray:
    """Per row of ``z``, the ``sigma`` with ``gini(softmax(sigma z)) = target`` (bisection)."""
    lo = np.zeros(z.shape[0])
    hi = np.full(z.shape[0], 20.0)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        too_skewed = gini(_softmax(mid[:, None] * z)) > target
        hi = np.where(too_skewed, mid, hi)
        lo = np.where(too_skewed, lo, mid)
    return 0.5 * (lo + hi)


class RoutingModel:
    """Per-request, per-layer expert token counts for one pipeline and one seed.

    Args:
        layer_sizes: experts per MoE layer, layers in topological order.
        top_k: experts per token, per layer.
        max_tokens: context tokens are clipped to this (the model's maximum sequence).
        params: skew, drift and affinity.
        seed: a :class:`numpy.random.SeedSequence` used only for routing.
    """

    def __init__(self, layer_sizes: list[int], top_k: list[int], *, max_tokens: int,
                 params: RoutingParams, seed: np.random.SeedSequence):
        self.sizes = list(layer_sizes)
        self.top_k = list(top_k)
        self.max_tokens = int(max_tokens)
        self.params = params
        drift_seq, self._block_seq, aff_seq = seed.spawn(3)
        self._drift_rng = np.random.default_rng(drift_seq)
        width = max(self.sizes, default=1)
        self._mask = np.arange(width)[None, :] < np.asarray(self.sizes)[:, None]  # (L, Emax)
        self._z = np.where(self._mask, self._drift_rng.standard_normal(self._mask.shape), -np.inf)
        self._sigma = np.array([solve_sigma(self._z[i:i + 1, :e], params.gini)[0]
                                for i, e in enumerate(self.sizes)])
        self._grid: list[np.ndarray] = [self._shares()]  # popularity per drift step
        self._affinity = self._affinity_matrices(np.random.default_rng(aff_seq))
        self._cache: dict[int, list[np.ndarray]] = {}

    # ---- popularity over time ------------------------------------------------------------
    def _shares(self) -> np.ndarray:
        z = np.where(self._mask, self._z, 0.0)
        logits = np.where(self._mask, self._sigma[:, None] * z, -np.inf)
        return _softmax(logits)  # (L, Emax), zeros past each layer's size

    def popularity(self, t_s: float) -> np.ndarray:
        """Expert shares per layer at time ``t_s``: shape (layers, max experts)."""
        p = self.params
        step = int(max(t_s, 0.0) // p.drift_step_s)
        rho = np.exp(-p.drift_step_s / p.drift_time_s) if p.drift_time_s > 0 else 1.0
        shift_p = 1 - np.exp(-p.drift_step_s / p.shift_every_s) if p.shift_every_s > 0 else 0
        while len(self._grid) <= step:
            noise = self._drift_rng.standard_normal(self._z.shape)
            z = np.where(self._mask, self._z, 0.0)
            z = rho * z + np.sqrt(1 - rho * rho) * noise
            for layer in np.flatnonzero(self._drift_rng.random(len(self.sizes)) < shift_p):
                e = self.sizes[layer]
                z[layer, :e] = z[layer, self._drift_rng.permutation(e)]
            self._z = np.where(self._mask, z, -np.inf)
            self._grid.append(self._shares())
        return self._grid[step]

    def _affinity_matrices(self, rng: np.random.Generator) -> list[np.ndarray | None]:
        mats: list[np.ndarray | None] = [None]
        for prev, nxt in zip(self.sizes, self.sizes[1:], strict=False):
            a = np.zeros((prev, nxt))
            fan = max(1, nxt // 8)
            for i in range(prev):
                a[i, rng.choice(nxt, size=fan, replace=False)] = 1.0 / fan
            mats.append(a)
        return mats

    # ---- per-request counts --------------------------------------------------------------
    def counts(self, lo: int, hi: int, times_s: np.ndarray, tokens: np.ndarray
               ) -> list[np.ndarray]:
        """Token counts for requests ``lo..hi-1``: one int array (hi-lo, experts) per layer.

        ``times_s`` and ``tokens`` are the whole trace's arrays (request index aligned).
        """
        out: list[list[np.ndarray]] = [[] for _ in self.sizes]
        last = (hi - 1) // _BLOCK + 1 if hi > lo else lo // _BLOCK
        for block in range(lo // _BLOCK, last):
            got = self._block(block, times_s, tokens)
            b0 = block * _BLOCK
            s, e = max(lo, b0) - b0, min(hi, b0 + _BLOCK) - b0
            for layer, arr in enumerate(got):
                out[layer].append(arr[s:e])
        return [np.concatenate(parts) if parts else np.zeros((0, n), np.int32)
                for parts, n in zip(out, self.sizes, strict=True)]

    def _block(self, block: int, times_s: np.ndarray, tokens: np.ndarray) -> list[np.ndarray]:
        if block in self._cache:
            return self._cache[block]
        b0, b1 = block * _BLOCK, min((block + 1) * _BLOCK, times_s.size)
        seq = self._block_seq
        rng = np.random.default_rng(np.random.SeedSequence(
            seq.entropy, spawn_key=(*seq.spawn_key, block)))
        t = np.minimum(tokens[b0:b1], self.max_tokens).astype(np.int64)
        steps = (np.maximum(times_s[b0:b1], 0) // self.params.drift_step_s).astype(np.int64)
        for step in np.unique(steps):  # generate the grid in order (deterministic)
            self.popularity(float(step) * self.params.drift_step_s)
        grid = np.stack([self._grid[s] for s in steps]) if steps.size else None
        layers: list[np.ndarray] = []
        prev: np.ndarray | None = None
        for layer, (e, k) in enumerate(zip(self.sizes, self.top_k, strict=True)):
            if grid is None:
                layers.append(np.zeros((0, e), np.int32))
                continue
            p = grid[:, layer, :e]
            a = self.params.affinity
            if a > 0 and prev is not None:
                share = prev / np.maximum(prev.sum(1, keepdims=True), 1)
                p = (1 - a) * p + a * (share @ self._affinity[layer])
                p = p / p.sum(1, keepdims=True)
            c = rng.multinomial(t * k, p).astype(np.int32)
            c = np.minimum(c, t[:, None]).astype(np.int32)
            layers.append(c)
            prev = c
        if len(self._cache) > 4:
            self._cache.pop(min(self._cache))
        self._cache[block] = layers
        return layers
