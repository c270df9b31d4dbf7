"""Token routing: which experts of each MoE layer each token of each pass picks (top-k).

Per task class ``c`` (chat, code, agent: :data:`~smoelib.sim.traces.TASKS`) and layer,
expert popularity is ``softmax(sigma * z)`` with ``z = sqrt(1 - w) z_shared + sqrt(w) z_c``
(``w`` = ``class_divergence``): classes agree in part and differ in part, so a change in the
traffic's task mix moves the hot experts. ``sigma`` is solved per class and layer so that the
routing Gini equals the configured target (0.1-0.4, research note "workload" 4). Both ``z``
drift as a stationary AR(1) on a fixed time grid (slow drift) and a layer's are reshuffled at
Poisson times (sudden shifts). A pass uses the popularity at its request's arrival.

A **decode** token picks ``top_k`` distinct experts per layer, drawn one after another in
proportion to the layer's probabilities among those not yet drawn (the Gumbel top-k
distribution; compiled: a request draws hundreds of passes). A
**prefill** chunk of ``T`` tokens sends ``T * top_k`` token slots to a layer,
drawn multinomially (each expert's count clipped to ``T``, as a token picks distinct experts).
Layers are correlated (Lina, ExFlow): with affinity ``a > 0`` the next layer's probabilities
are ``(1 - a) p + a * (c A)``, ``c`` the previous layer's choice (shares for a chunk) and ``A``
a sparse row-stochastic preference.

Common random numbers: every request's draws come from its own child of the routing seed, so
every policy sees the same routing for the same seed, whatever order requests are served in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["RoutingModel", "RoutingParams", "gini", "solve_sigma", "touched_share"]


@dataclass(frozen=True)
class RoutingParams:
    """Units: ``drift_step_s`` and ``drift_time_s`` seconds, ``shift_every_s`` mean seconds
    between sudden shifts (0: never); ``classes`` the number of task classes."""

    gini: float = 0.25
    drift_step_s: float = 10.0
    drift_time_s: float = 600.0
    shift_every_s: float = 900.0
    affinity: float = 0.0
    classes: int = 3
    class_divergence: float = 0.5


def touched_share(n_tokens, top_k: int, experts: int):
    """Expected share of a layer's experts that ``n_tokens`` uniformly routed tokens touch:
    ``1 - (1 - k / E) ** N``."""
    return 1.0 - (1.0 - top_k / experts) ** np.asarray(n_tokens, dtype=float)


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
    """Per-pass, per-layer expert choices for one pipeline and one seed.

    Args:
        layer_sizes: experts per MoE layer, layers in topological order.
        top_k: experts per token, per layer.
        max_tokens: context tokens are clipped to this (the model's maximum sequence).
        params: skew, drift, affinity and classes.
        seed: a :class:`numpy.random.SeedSequence` used only for routing.
        picks: the per-request picks' own sequence (None: ``seed``'s); the popularity path
            and the affinities always come from ``seed``.
    """

    def __init__(self, layer_sizes: list[int], top_k: list[int], *, max_tokens: int,
                 params: RoutingParams, seed: np.random.SeedSequence,
                 picks: np.random.SeedSequence | None = None):
        self.sizes = list(layer_sizes)
        self.top_k = list(top_k)
        self.max_tokens = int(max_tokens)
        self.params = params
        drift_seq, self._req_seq, aff_seq = seed.spawn(3)
        if picks is not None:
            self._req_seq = picks
        self._drift_rng = np.random.default_rng(drift_seq)
        width = max(self.sizes, default=1)
        self._mask = np.arange(width)[None, :] < np.asarray(self.sizes)[:, None]  # (L, Emax)
        c = max(1, params.classes)
        shape = (c + 1, *self._mask.shape)  # slot 0: shared, 1..c: per class
        self._z = np.where(self._mask, self._drift_rng.standard_normal(shape), 0.0)
        mixed = self._mixed(self._z)
        self._sigma = np.array([[solve_sigma(mixed[k, i:i + 1, :e], params.gini)[0]
                                 for i, e in enumerate(self.sizes)] for k in range(c)])
        self._grid: list[np.ndarray] = [self._shares()]  # (C, L, Emax) per drift step
        self._affinity = self._affinity_matrices(np.random.default_rng(aff_seq))
        mats = [np.zeros((1, 1)) if m is None else m for m in self._affinity]
        self._aff_off = np.concatenate([[0], np.cumsum([m.size for m in mats])]).astype(np.int64)
        self._aff_flat = np.concatenate([m.reshape(-1) for m in mats])
        self.widths = np.minimum(np.asarray(self.top_k, np.int64),
                                 np.asarray(self.sizes, np.int64))
        """experts a decode token picks per layer (``top_k``, at most the layer's experts)"""

    # ---- popularity over time ------------------------------------------------------------
    def _mixed(self, z: np.ndarray) -> np.ndarray:
        w = self.params.class_divergence
        return np.sqrt(1 - w) * z[:1] + np.sqrt(w) * z[1:]

    def _shares(self) -> np.ndarray:
        logits = np.where(self._mask, self._sigma[:, :, None] * self._mixed(self._z), -np.inf)
        return _softmax(logits)  # (C, L, Emax), zeros past each layer's size

    def popularity(self, t_s: float, task: int = 0) -> np.ndarray:
        """Expert shares per layer at time ``t_s`` for task class ``task``: shape (layers,
        max experts)."""
        return self._grid_at(t_s)[task]

    def _grid_at(self, t_s: float) -> np.ndarray:
        p = self.params
        step = int(self.drift_step(t_s))
        rho = np.exp(-p.drift_step_s / p.drift_time_s) if p.drift_time_s > 0 else 1.0
        shift_p = 1 - np.exp(-p.drift_step_s / p.shift_every_s) if p.shift_every_s > 0 else 0
        while len(self._grid) <= step:
            noise = self._drift_rng.standard_normal(self._z.shape)
            z = rho * self._z + np.sqrt(1 - rho * rho) * noise
            for layer in np.flatnonzero(self._drift_rng.random(len(self.sizes)) < shift_p):
                e = self.sizes[layer]
                z[:, layer, :e] = z[:, layer, self._drift_rng.permutation(e)]
            self._z = np.where(self._mask, z, 0.0)
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

    # ---- expected shares (for the fast mode) ----------------------------------------------
    def drift_step(self, t_s):
        """The index of the drift step whose popularity a pass arriving at ``t_s`` uses
        (broadcasts: an int64 array for an array of times)."""
        return (np.maximum(t_s, 0.0) // self.params.drift_step_s).astype(np.int64)

    def _pulled(self, layer: int, p: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
        """Layer ``layer``'s shares ``p`` pulled towards the previous layer's choice (its
        shares ``prev``) by the affinity: ``(1 - a) p + a (prev A)``, renormalised."""
        a = self.params.affinity
        if a <= 0 or prev is None:
            return p
        p = (1 - a) * p + a * (prev @ self._affinity[layer])
        return p / p.sum()

    def decode_inclusion(self, step: int, task: int = 0) -> np.ndarray:
        """Per layer and expert, the chance that one decode token of a request of class
        ``task`` arriving in drift step ``step`` picks it: shape (layers, max experts), each
        layer summing to its width. Not ``top_k x popularity``: picks are distinct (a hot
        expert's chance is below ``k p``, a cold one's above) and follow the previous layer's
        first pick (affinity), so it is estimated with the sampler the engines draw from, on
        a stream of its own (reading it changes no request's routing; the same step and class
        give the same estimate). Exact for ``top_k`` of 1 or 2 on layers of up to about
        100 experts; otherwise estimated from samples: 4,000 (a share of 0.3 within about 0.7
        points), fewer on big pipelines (about 10 million draws a call, at least 500)."""
        pop = np.ascontiguousarray(self._grid_at(step * self.params.drift_step_s)[task])
        sizes = np.asarray(self.sizes, np.int64)
        width = self.widths
        if width.max() <= 2 and max(e * e * p for e, p in zip(sizes, [1, *sizes[:-1]],
                                                                strict=True)) <= 1_000_000:
            return _inclusion_top2(pop, sizes, width, self._aff_flat, self._aff_off,
                                   float(self.params.affinity))
        draws = max(1, int((width * sizes).sum()))
        passes = int(min(4_000, max(500, 10_000_000 // draws)))
        seq = self._req_seq
        rng = np.random.default_rng(np.random.SeedSequence(
            seq.entropy, spawn_key=(*seq.spawn_key, 2**32 + int(step), int(task))))
        u = rng.random(int(passes * width.sum()))
        out = _picks(pop, sizes, width, self._aff_flat, self._aff_off,
                     float(self.params.affinity), u, passes)
        incl = np.zeros_like(pop)
        col = 0
        for layer, k in enumerate(width):
            incl[layer] = np.bincount(out[:, col:col + k].ravel(),
                                      minlength=pop.shape[1])[:pop.shape[1]] / passes
            col += k
        return incl

    def chunk_shares(self, t_s: float, task: int = 0) -> np.ndarray:
        """Per layer and expert, the expected share of a prefill chunk's token slots
        (``tokens x top_k`` of them) that go to it: the popularity mixed through the
        affinity with the previous layer's shares, as :meth:`chunk` draws them."""
        pop = self.popularity(t_s, task)
        out = np.zeros_like(pop)
        prev: np.ndarray | None = None
        for layer, e in enumerate(self.sizes):
            prev = out[layer, :e] = self._pulled(layer, pop[layer, :e], prev)
        return out

    # ---- per-request draws ---------------------------------------------------------------
    def rng_for(self, request: int) -> np.random.Generator:
        """The routing generator of one request (its own child of the routing seed)."""
        seq = self._req_seq
        return np.random.default_rng(np.random.SeedSequence(
            seq.entropy, spawn_key=(*seq.spawn_key, int(request))))

    def decode(self, rng: np.random.Generator, passes: int, t_s: float, task: int = 0
               ) -> list[np.ndarray]:
        """Expert choices of ``passes`` one-token passes: per layer an int array (passes,
        top_k) of distinct expert indices, the most preferred first."""
        pop = self.popularity(t_s, task)
        sizes = np.asarray(self.sizes, np.int64)
        width = self.widths
        u = rng.random(int(passes * width.sum()))  # layer after layer, (passes, width)
        out = _picks(np.ascontiguousarray(pop), sizes, width, self._aff_flat, self._aff_off,
                     float(self.params.affinity), u, int(passes))
        cuts = np.cumsum(width)[:-1]
        return [np.ascontiguousarray(x) for x in np.split(out, cuts, axis=1)]

    def chunk(self, rng: np.random.Generator, tokens: int, t_s: float, task: int = 0
              ) -> list[np.ndarray]:
        """Token counts per expert of one chunk of ``tokens`` tokens: per layer an int array
        (experts,)."""
        pop = self.popularity(t_s, task)
        out: list[np.ndarray] = []
        for layer, (e, k) in enumerate(zip(self.sizes, self.top_k, strict=True)):
            prev = out[-1] / max(out[-1].sum(), 1) if out else None
            p = self._pulled(layer, pop[layer, :e], prev)
            out.append(np.minimum(rng.multinomial(tokens * k, p), tokens))
        return out

    def counts(self, lo: int, hi: int, times_s: np.ndarray, tokens: np.ndarray,
               task: np.ndarray | None = None) -> list[np.ndarray]:
        """Token counts of one ``tokens``-long chunk per request ``lo..hi-1`` (drawn from a
        stream of its own, so reading them changes no pass the engine serves): one int array
        (hi-lo, experts) per layer. For offered-load estimates (hindsight, aggregation)."""
        out = [np.zeros((hi - lo, e), np.int64) for e in self.sizes]
        for r in range(lo, hi):
            rng = np.random.default_rng(np.random.SeedSequence(
                self._req_seq.entropy, spawn_key=(*self._req_seq.spawn_key, int(r), 1)))
            got = self.chunk(rng, int(min(tokens[r], self.max_tokens)), float(times_s[r]),
                             0 if task is None else int(task[r]))
            for layer, c in enumerate(got):
                out[layer][r - lo] = c
        return out


@njit(cache=True)
def _picks(pop, sizes, width, aff, aff_off, a, u, passes):
    """Per pass and layer, ``width[l]`` distinct experts drawn one after another in proportion
    to ``p`` among those not yet drawn (sampling without replacement: the Gumbel top-k
    distribution, from ``width[l]`` uniforms instead of one Gumbel per expert); ``p`` the
    layer's shares mixed with the affinity row of the previous layer's first choice. ``u``
    holds layer after layer a (passes, width) block. Returns (passes, sum of widths)."""
    out = np.empty((passes, width.sum()), np.int64)
    p = np.empty(sizes.max())
    u0 = 0
    col = 0
    for layer in range(sizes.size):
        e = sizes[layer]
        k = width[layer]
        for i in range(passes):
            prev = out[i, col - width[layer - 1]] if layer > 0 else -1
            total = 0.0
            for j in range(e):
                q = pop[layer, j]
                if a > 0 and prev >= 0:
                    q = (1 - a) * q + a * aff[aff_off[layer] + prev * e + j]
                p[j] = q
                total += q
            for m in range(k):
                x = u[u0 + i * k + m] * total
                pick = -1
                for j in range(e):
                    if p[j] > 0:
                        pick = j
                        x -= p[j]
                        if x < 0:
                            break
                out[i, col + m] = pick
                total -= p[pick]
                p[pick] = 0.0
        u0 += passes * k
        col += k
    return out


@njit(cache=True)
def _inclusion_top2(pop, sizes, width, aff, aff_off, a):
    """:meth:`RoutingModel.decode_inclusion` exactly, for widths of 1 or 2: per layer and
    previous first pick, the pick distribution ``q`` that :func:`_picks` draws from, then
    ``P(i) = q_i`` (one pick) or ``q_i + sum_j!=i q_j q_i / (1 - q_j)`` (two distinct picks,
    one after another); the first pick's distribution carries to the next layer."""
    n_layers = sizes.size
    out = np.zeros(pop.shape)
    first = np.zeros(pop.shape[1])  # the previous layer's first-pick distribution
    nxt = np.zeros(pop.shape[1])
    q = np.empty(pop.shape[1])
    for layer in range(n_layers):
        e = sizes[layer]
        n_prev = sizes[layer - 1] if layer > 0 and a > 0 else 1
        for j in range(e):
            nxt[j] = 0.0
        for prev in range(n_prev):
            w = first[prev] if layer > 0 and a > 0 else 1.0
            if w <= 0.0:
                continue
            total = 0.0
            for j in range(e):
                x = pop[layer, j]
                if layer > 0 and a > 0:
                    x = (1 - a) * x + a * aff[aff_off[layer] + prev * e + j]
                q[j] = x
                total += x
            for j in range(e):
                q[j] /= total
                nxt[j] += w * q[j]
            if width[layer] == 1:
                for j in range(e):
                    out[layer, j] += w * q[j]
                continue
            s = 0.0
            for j in range(e):
                if q[j] < 1.0:
                    s += q[j] / (1.0 - q[j])
            for i in range(e):
                own = q[i] / (1.0 - q[i]) if q[i] < 1.0 else 0.0
                out[layer, i] += w * (q[i] + q[i] * (s - own))
        for j in range(e):
            first[j] = nxt[j]
    return out
