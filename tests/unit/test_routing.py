"""The compiled prefill-chunk sampler (smoelib.sim.routing) against numpy's own multinomial."""

from __future__ import annotations

import numpy as np
import pytest

from smoelib.sim.routing import RoutingModel, RoutingParams


def _numpy_chunk(router: RoutingModel, rng, tokens: int, t_s: float, task: int):
    """A chunk as numpy draws it: per layer ``Generator.multinomial`` over the popularity
    pulled towards the previous layer's counts by the affinity matrix, each expert capped at
    ``tokens``."""
    pop = router.popularity(t_s, task)
    out: list[np.ndarray] = []
    for layer, (e, k) in enumerate(zip(router.sizes, router.top_k, strict=True)):
        prev = out[-1] / max(out[-1].sum(), 1) if out else None
        p = pop[layer, :e]
        if prev is not None and router.params.affinity > 0:
            a = router.params.affinity
            p = (1 - a) * p + a * (prev @ router._affinity[layer])
            p = p / p.sum()
        out.append(np.minimum(rng.multinomial(tokens * k, p), tokens))
    return out


@pytest.mark.parametrize(("sizes", "top_k", "affinity"), [
    ([8] * 6, [2] * 6, 0.3), ([6] * 4, [2] * 4, 0.0), ([256] * 2, [8] * 2, 0.3),
    ([3, 5, 7], [1, 2, 3], 0.5)])
def test_a_chunk_is_numpys_multinomial_draw_for_draw(sizes, top_k, affinity):
    router = RoutingModel(sizes, top_k, max_tokens=4096,
                          params=RoutingParams(affinity=affinity), seed=np.random.SeedSequence(5))
    for r in range(60):
        ours, theirs = router.rng_for(r), router.rng_for(r)
        tokens = [0, 1, 7, 300, 2048][r % 5]
        got = router.chunk(ours, tokens, 3.7 * r, r % 3)
        want = _numpy_chunk(router, theirs, tokens, 3.7 * r, r % 3)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
        assert ours.random() == theirs.random()  # the generator is left where numpy leaves it


def test_chunk_entries_list_the_touched_experts_chunk_after_chunk():
    router = RoutingModel([8] * 3, [2] * 3, max_tokens=4096,
                          params=RoutingParams(affinity=0.3), seed=np.random.SeedSequence(1))
    chunks = np.array([512, 512, 40])
    ptr, experts, counts = (np.zeros(16, np.int64), np.zeros(100, np.int32),
                            np.zeros(100, np.int32))
    n_ptr, n_ent = router.chunk_entries(router.rng_for(4), chunks, 12.0, 1, ptr, experts,
                                        counts, 2, 5)
    assert n_ptr == 2 + 3 * 3
    ptr[n_ptr] = n_ent
    rng = router.rng_for(4)
    for c, tokens in enumerate(chunks):
        for layer, want in enumerate(router.chunk(rng, int(tokens), 12.0, 1)):
            q = 2 + c * 3 + layer
            lo, hi = ptr[q], ptr[q + 1]
            assert experts[lo:hi].tolist() == np.flatnonzero(want).tolist()
            assert counts[lo:hi].tolist() == want[want > 0].tolist()
    assert ptr[2] == 5


def test_chunk_shares_are_the_popularity_pulled_layer_after_layer():
    router = RoutingModel([6, 8, 4], [2, 2, 1], max_tokens=4096,
                          params=RoutingParams(affinity=0.4), seed=np.random.SeedSequence(2))
    pop = router.popularity(30.0, 1)
    got = router.chunk_shares(30.0, 1)
    prev = None
    for layer, e in enumerate(router.sizes):
        p = pop[layer, :e]
        if prev is not None:
            p = 0.6 * p + 0.4 * (prev @ router._affinity[layer])
            p = p / p.sum()
        np.testing.assert_allclose(got[layer, :e], p, rtol=1e-12)
        assert got[layer, e:].sum() == 0.0
        prev = p
