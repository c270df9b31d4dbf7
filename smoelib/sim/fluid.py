"""The fast training mode (``simulator.engine: fluid``): queueing arithmetic per node and
control slice instead of one event per call.

The request-level engines (:mod:`smoelib.sim.engine`, :mod:`smoelib.sim.compiled`) serve every
call; this engine serves the same trace on the same cluster with the same service model
(:mod:`smoelib.core.service`) and the same pass structure, as averages over a slice:

- **Load.** A request's prefill (or encoder) pass happens at its arrival, in chunks where the
  pipeline chunks it; its decode passes follow one after another. Per slice, ``N`` requests
  are decoding (time-averaged) and each makes a pass every ``tau`` seconds, so a node receives
  ``N / tau x v`` decode calls a second, ``v`` its calls per pass: 1 for a segment, for an
  expert the chance that a token picks it (Routing, below). Arrivals add their prefill
  calls: one per segment, one per expert a chunk touches (``1 - (1 - q) ^ (tokens x k)``,
  ``q`` its share of the chunk's token slots).
- **A node** (``R`` ready replicas, ``c`` workers each, ``K`` = ``max_inflight``) spreads its
  calls over its workers. A worker takes every call waiting as one batch
  (:meth:`~smoelib.core.service.ServiceModel.batch_ms`): a decode batch holds the calls that
  arrived during the last one, or one after an idle spell (``n = x + exp(-x)``, ``x =
  lambda_w T(n)``, only while the other workers are busy too); a prefill call is served with
  its own tokens. A decode call costs its share of its batch, ``T(n) / n``, and the worker's
  busy fraction ``rho`` is the work offered. A call that finds every worker busy (``rho^c``)
  waits for the batch in service, length-biased over decode batches (their size varies as
  ``lambda T / (1 - (lambda b)^2)``, ``b`` one more call's cost) and prefill calls (a rare
  long prefill is what makes decode calls wait), then rides in the next batch, which holds
  the calls that arrived meanwhile. Calls in a pod are ``lambda_pod x L`` on average (Little);
  a call is refused (429) when ``K`` are there, with the tail of a negative binomial count of
  that mean (Poisson while workers are free, geometric when all are busy), or, when the node
  cannot serve its load even at full batches, with ``1 - capacity / load``; a refused call
  retries with the jittered backoff's mean delay, up to ``max_retries`` times, and a call
  refused every time drops its request. A node with no ready replica refuses every call.
  With ``simulator.fluid_pods: chain`` a pod of one worker (every example pipeline's
  experts) is solved exactly instead, as the chain of the sizes of its batches
  (:func:`_one_worker`: wait, batch, busy time and refusals of a Poisson-fed pod, prefill
  calls mixed in); the rest above holds for pods of more workers (the segments).
- **Routing.** A decode token's chance to pick an expert is estimated with the engines' own
  sampler (distinct top-k picks follow the previous layer's first pick) per task class and
  drift step, mixed over the requests in flight by the passes they make in the slice (a
  request routes with the popularity at its arrival); a prefill chunk's token slots follow
  the popularity mixed through the affinity.
- **Passes.** A stage's latency is its node's ``L`` (an MoE stage: the mean over the experts a
  token picks plus the expected maximum of ``top_k`` draws of their spread and the service
  noise); a pass is the critical path through its stages with ``rpc_overhead_ms`` per hop,
  as the request-level engines schedule it. The decode pass time ``tau`` and the load it
  makes are solved together (a damped fixed point: the decode loop is closed, so an overloaded
  node slows the passes until its load is what it serves). An MoE stage's spread includes
  the wait's own (a call waits with chance ``rho^c``). A prefill pass's stage serves the
  request's own call (its tokens, the hottest expert's share at an MoE stage) after the wait.
- **Requests.** Each request's TTFT is its prefill at the slice it arrives in; its decode
  passes advance at ``1 / tau`` per second of each slice, so its TPOT is the mean pass time
  over the slices it decodes in. Drops are drawn per request and slice from the per-call drop
  chance of the calls it makes there (the dispatch generator).

What it does not model: the per-request variation of routing and service noise (averaged over a
request's passes, they move its TPOT little) and arrivals that are not Poisson (the closed decode
loop spaces calls out at light load and sends them in waves under congestion; measured in
docs/simulator.md, where a node model exact for Poisson arrivals is shown to agree less).
How far it agrees with the request-level engine is measured in
``tests/unit/test_fluid_engine.py`` and docs/simulator.md. Per-node arithmetic is compiled
(numba) over arrays; the per-request bookkeeping is vectorised numpy.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from smoelib.core import work
from smoelib.core.service import handler_slowdown
from smoelib.sim.borrow import borrowed
from smoelib.sim.cluster import Cluster
from smoelib.sim.compiled import model_columns
from smoelib.sim.engine import Engine, StagePlan
from smoelib.sim.kernel import ffn_ms
from smoelib.sim.telemetry import CALL_BOUNDS_S, Telemetry

__all__ = ["FluidEngine"]

# per-node results of :func:`_node_model` (columns): a decode call's batch size and service (ms),
# the busy fraction, a decode call's latency (s, wait and retries included), the wait for a
# busy worker (s), refusal and drop chance per attempt and call, rejections per call, the
# admitted share, a prefill call's service (ms) and latency (s)
(N_BATCH, N_T, N_RHO, N_L, N_WAIT, N_BLOCK, N_DROP, N_REJ, N_ADMIT, N_TP, N_LP) = range(11)
NODE_COLUMNS = 11
_FIXED_POINT = 12  # damped iterations of the decode pass time per slice, at most
_TAU_TOL = 1e-3  # until the pass time moves less than this (relative)
SUB_S = 1.0  # the slice (s) of a tick whose arrivals or decoding requests move
_VAR_FLOOR = 0.2  # 1 - (lambda b)^2 at least: the batch-size variance at saturation, at most
# the expected maximum of k standard normal draws (k = 1..8): an MoE stage waits for its
# slowest pick
_MAX_OF = np.array([0.0, 0.0, 0.5642, 0.8463, 1.0294, 1.1630, 1.2672, 1.3522, 1.4236])


@njit(cache=True)
def _batch_ms(i, calls, tokens, k0, k1, share, cores, interf, m_kind, m_f, m_coff, m_ct, m_cm):
    """One batch of ``calls`` calls carrying ``tokens`` tokens on node ``i`` (ms)."""
    return (k0[i] * calls + k1[i] * tokens
            + ffn_ms(m_kind, m_f, m_coff, m_ct, m_cm, i, tokens, share[i], cores[i]) * interf[i])


@njit(cache=True)
def _tail(mean, theta, k):
    """``P(N >= k)`` for ``N`` negative binomial of ``mean`` and variance ``mean + theta
    mean^2``: the calls in a pod. Poisson (``theta = 0``) while workers are free, as for
    workers that take all waiting calls at once (close to an infinite server); geometric
    (``theta = 1``, M/M/1's) when every worker is busy and calls queue."""
    if mean <= 0.0:
        return 0.0
    r = 1.0 / max(theta, 1e-6)
    q = mean / (r + mean)
    pk = math.exp(r * math.log(r / (r + mean)))  # P(N = 0)
    below = 0.0
    for j in range(int(math.ceil(k))):
        below += pk
        pk *= (j + r) / (j + 1.0) * q
    return min(max(1.0 - below, 0.0), 1.0)


# eight points of equal probability (their quantiles) of an exponential wait of unit mean,
# and of a standard normal
_WAIT_AT = -np.log(1.0 - (np.arange(8) + 0.5) / 8.0)
_NORMAL_AT = np.array([-1.5341, -0.8871, -0.4888, -0.1573, 0.1573, 0.4888, 0.8871, 1.5341])


_Z_FAR = 8.5  # standard deviations past which a normal's tail is below 1e-17: 0 or 1
_NOISE_GRID = 1024  # points of the noise's CDF table


def noise_cdf_table(cv: float) -> np.ndarray:
    """The CDF of the engines' unit-mean gamma service noise of CV ``cv`` (its cube root
    normal with mean ``1 - cv^2 / 9`` and variance ``cv^2 / 9``, Wilson-Hilferty) on an even
    grid: ``[lo, hi, values...]``, 0 below ``lo`` and 1 above ``hi`` (``_Z_FAR`` deviations
    out). Empty for no noise."""
    if cv <= 0.0:
        return np.zeros(0)
    a = cv * cv / 9.0
    sd = math.sqrt(a)
    lo, hi = max(1.0 - a - _Z_FAR * sd, 0.0) ** 3, (1.0 - a + _Z_FAR * sd) ** 3
    x = np.linspace(lo, hi, _NOISE_GRID)
    z = (np.cbrt(x) - (1.0 - a)) / sd
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in z])
    cdf[0], cdf[-1] = 0.0, 1.0
    return np.concatenate([[lo, hi], cdf])


@njit(cache=True)
def _noise_below(x, table):
    """``P(G <= x)`` from :func:`noise_cdf_table` (linear between its points)."""
    if table.size == 0:
        return 1.0 if x >= 1.0 else 0.0
    lo, hi = table[0], table[1]
    if x <= lo:
        return 0.0
    if x >= hi:
        return 1.0
    t = (x - lo) / (hi - lo) * (table.size - 3)
    k = min(int(t), table.size - 4)
    f = t - k
    return table[2 + k] * (1.0 - f) + table[3 + k] * f


@njit(cache=True)
def _add_latencies(hist, bounds, n_calls, service_s, wait_s, cv, table):
    """Adds each node's ``n_calls[i]`` call latencies to its bucket counts ``hist[i]`` (the
    last bound infinite): the service ``service_s[i]`` times the engines' unit-mean service
    noise of CV ``cv`` (its CDF ``table``, :func:`noise_cdf_table`), after an exponential
    wait of mean ``wait_s[i]``. The narrower of the two is taken at eight points of equal
    probability, the wider exactly. Without the noise a call short of a bound by less than
    its spread would sit wholly below it, and a P95 read from the buckets would come out low
    (docs/simulator.md)."""
    sd = cv / 3.0  # of the noise's cube root
    a = sd * sd
    last = bounds.size - 1
    at = np.empty(8)  # the points' latencies less the wait, or the waits
    grow = np.empty(8)
    for i in range(hist.shape[0]):
        if n_calls[i] <= 0.0:
            continue
        s, w = service_s[i], wait_s[i]
        by_wait = w > s * cv  # the wait spreads more: the noise at the points
        for m in range(8):
            if by_wait:
                g = max(1.0 - a + sd * _NORMAL_AT[m], 0.0)
                at[m] = s * g * g * g
                # P(W <= b - at[m]) = 1 - exp(-(b - at[0]) / w) grow[m] (at[0] the least)
                grow[m] = math.exp((at[m] - at[0]) / w)
            else:
                at[m] = w * _WAIT_AT[m]
        before = 0.0
        for j in range(bounds.size):
            cdf = 1.0
            if j < last:
                b, total = bounds[j], 0.0
                if by_wait:
                    if b > at[0]:
                        fall = math.exp(-(b - at[0]) / w)
                        for m in range(8):
                            if b > at[m]:
                                total += 1.0 - fall * grow[m]
                elif s <= 0.0:  # no service: the wait alone
                    for m in range(8):
                        total += 1.0 if b >= at[m] else 0.0
                else:
                    for m in range(8):
                        if b > at[m]:
                            total += _noise_below((b - at[m]) / s, table)
                cdf = max(total / 8.0, before)
            hist[i, j] += (cdf - before) * n_calls[i]
            before = cdf
            if cdf >= 1.0:
                break  # every later bucket holds none


# a unit-mean service noise of CV ``cv`` at two points (1 + cv x these, these weights): its
# mean and variance
_NOISE_AT = np.array([-1.0, 1.0])
_NOISE_W = np.array([0.5, 0.5])
CHAIN_MAX = 24  # one-worker pods of at most this max_inflight are solved as a batch chain
# the per-state sums of :func:`_one_worker` (columns of its scratch): a batch's mean duration,
# the idle spell after it, the next batch's total wait, the arrivals refused during it, a
# decode and a prefill call's own batch
(A_D, A_IDLE, A_WAIT, A_REF, A_OWN_D, A_OWN_P) = range(6)
ACC_COLUMNS = 6


@njit(cache=True)
def _stationary(trans, k, m, pi):
    """The stationary distribution ``pi = pi P`` of the chain ``trans[:k, :k]`` (rows sum to
    one), into ``pi[:k]``: Gaussian elimination with partial pivoting on ``P^T - I``, one row
    replaced by the normalisation (``m``: scratch of ``(k, k + 1)`` at least)."""
    for r in range(k):
        for c in range(k):
            m[r, c] = trans[c, r] - (1.0 if r == c else 0.0)
        m[r, k] = 0.0
    for c in range(k + 1):
        m[k - 1, c] = 1.0
    for c in range(k):
        piv = c
        for r in range(c + 1, k):
            if abs(m[r, c]) > abs(m[piv, c]):
                piv = r
        if piv != c:
            for j in range(k + 1):
                m[c, j], m[piv, j] = m[piv, j], m[c, j]
        if abs(m[c, c]) < 1e-300:
            continue
        for r in range(k):
            if r != c and m[r, c] != 0.0:
                f = m[r, c] / m[c, c]
                for j in range(c, k + 1):
                    m[r, j] -= f * m[c, j]
    tot = 0.0
    for r in range(k):
        pi[r] = max(m[r, k] / m[r, r], 0.0) if abs(m[r, r]) > 1e-300 else 0.0
        tot += pi[r]
    for r in range(k):
        pi[r] /= max(tot, 1e-300)


@njit(cache=True)
def _one_worker(lam, q, tok, t1, tp, cap, cv, a, trans, acc, pmf, res):
    """One worker that takes every call waiting as one batch, fed ``lam`` calls/ms (Poisson),
    a share ``q`` of them prefill calls of ``tok`` tokens, in a pod that holds at most
    ``cap`` calls (the batch in service and those waiting; an arrival beyond is refused): the
    chain of batch sizes, solved exactly. A batch of ``n`` calls lasts ``D``, ``batch_ms`` at
    its calls and tokens times the service noise; the next batch holds the arrivals during
    it (Poisson of mean ``lam D``, uniform over it), at most ``cap - n`` of them, the first
    ones, or one call after an idle spell. ``t1``, ``tp``: a batch of one decode and of one
    prefill call (ms); ``a``: the node and its model arrays (:func:`_batch_ms`). Scratch:
    :func:`chain_scratch`. ``res``: calls per batch, busy
    fraction, mean wait (ms), a decode and a prefill call's own batch (ms), the share of
    attempts refused. benchmarks/fluid_nodes.py checks it against a direct simulation."""
    # batch sizes beyond ``k`` are out of reach (chance under 1e-5 at the longest noise)
    k = 1
    while k < cap:
        longest = max(t1, tp) if k == 1 else _batch_ms(a[0], float(k), k * (1.0 - q)
                                                       + k * q * tok, *a[1:])
        if _tail(lam * longest * (1.0 + cv * _NOISE_AT[-1]), 0.0, k + 1) < 1e-5:  # Poisson
            break
        k += 1
    for r in range(k):
        for j in range(k):
            trans[r, j] = 0.0
        for j in range(ACC_COLUMNS):
            acc[r, j] = 0.0
    for n in range(1, k + 1):
        r = n - 1
        m = cap - n  # calls that may wait behind this batch
        top = min(m, k + 2)  # arrivals counted one by one; beyond, out of reach
        # b prefill calls among the n: binomial, b = 0 first
        pb = 0.0 if q >= 1.0 else (1.0 - q) ** n
        for b in range(n + 1):
            if b > 0 and q < 1.0:
                pb *= (n - b + 1.0) / b * q / (1.0 - q)
            elif b > 0:
                pb = 1.0 if b == n else 0.0
            if pb < 1e-9:
                continue
            if n == 1:
                base = t1 if b == 0 else tp
            else:
                base = _batch_ms(a[0], float(n), n - b + b * tok, *a[1:])
            # the calls' own batch, seen by one decode (one prefill) call among the others
            acc[r, A_OWN_D] += pb * (n - b) / n * base
            acc[r, A_OWN_P] += pb * b / n * base
            for g in range(_NOISE_AT.size):
                _batch_gap(r, base * max(1.0 + cv * _NOISE_AT[g], 0.05), pb * _NOISE_W[g],
                           lam, m, top, k, trans, acc, pmf)
    if k > 1:
        _stationary(trans, k, trans[k:, :], pmf)  # pmf now holds pi
    else:
        pmf[0] = 1.0
    calls = 0.0
    cycle = 0.0
    busy = 0.0
    wait = 0.0
    refused = 0.0
    sd = 0.0
    sp = 0.0
    for r in range(k):
        pi = pmf[r]
        calls += pi * (r + 1)
        busy += pi * acc[r, A_D]
        cycle += pi * (acc[r, A_D] + acc[r, A_IDLE])
        wait += pi * acc[r, A_WAIT]
        refused += pi * acc[r, A_REF]
        sd += pi * (r + 1) * acc[r, A_OWN_D]
        sp += pi * (r + 1) * acc[r, A_OWN_P]
    res[0] = calls
    res[1] = busy / max(cycle, 1e-12)
    res[2] = wait / max(calls, 1e-12)
    # a call's own batch, weighted by the calls of each kind in it
    res[3] = sd / max(calls * (1.0 - q), 1e-12) if q < 1.0 else t1
    res[4] = sp / max(calls * q, 1e-12) if q > 0.0 else tp
    res[5] = min(refused / max(lam * cycle, 1e-12), 1.0)


def chain_scratch() -> tuple[np.ndarray, ...]:
    """The arrays :func:`_one_worker` works in (the chain and its solver's rows, the per-state
    sums, the Poisson terms and then the stationary law) and its results, in the order
    :func:`_node_model` takes them after ``chain_max``."""
    return (np.empty((2 * CHAIN_MAX + 1, CHAIN_MAX + 1)), np.empty((CHAIN_MAX, ACC_COLUMNS)),
            np.empty(CHAIN_MAX + 3), np.empty(6))


@njit(cache=True, inline="always")
def _batch_gap(r, d, w, lam, m, top, k, trans, acc, pmf):
    """Add to state ``r`` (a batch of ``r + 1`` calls) one duration ``d`` (ms) of the batch,
    of weight ``w``: Poisson arrivals of mean ``lam d`` during it, ``m`` of them admitted at
    most (the first ones), counted one by one up to ``top``."""
    mu = lam * d
    acc[r, A_D] += w * d
    p0 = math.exp(-mu)
    p = p0
    below = 0.0  # P(X < top)
    below_x = 0.0  # E[X; X < top]
    below_inv = 0.0  # E[1 / (X + 1); X < top]
    for x in range(top):
        pmf[x] = p
        below += p
        below_x += x * p
        below_inv += p / (x + 1.0)
        p *= mu / (x + 1.0)
    trans[r, 0] += w * p0  # idle, then one call
    acc[r, A_IDLE] += w * p0 / max(lam, 1e-12)
    for x in range(1, top):  # every arrival waits for the batch to end
        trans[r, min(x, k) - 1] += w * pmf[x]
        acc[r, A_WAIT] += w * pmf[x] * x * d * 0.5
    if m == 0:
        trans[r, 0] += w * (1.0 - p0)  # all refused: idle, then one
        acc[r, A_REF] += w * mu
    elif top == m:
        tail = max(1.0 - below, 0.0)
        trans[r, min(m, k) - 1] += w * tail
        # the first m of X arrivals: the i-th at i / (X + 1) of the batch
        inv = max((1.0 - p0) / mu - below_inv, 0.0) if mu > 1e-9 else 0.0
        acc[r, A_WAIT] += w * d * (m * tail - 0.5 * m * (m + 1.0) * inv)
        acc[r, A_REF] += w * max(mu - below_x - m * tail, 0.0)


@njit(cache=True)
def _nodes(*args):
    """:func:`_node_model` over arrays that count no references (smoelib/sim/borrow.py)."""
    _node_model(*borrowed(args))


@njit(cache=True)
def _node_model(lam, lam_p, tok_p, tok2_p, ready, par, k0, k1, share, cores, interf, conc,
                cv2, retry_s, cap_s, max_retries, m_kind, m_f, m_coff, m_ct, m_cm, out,
                chain_max, trans, acc, pmf, chain):
    """Per node, at ``lam`` decode calls/s (one token each) and ``lam_p`` prefill calls/s
    (``tok_p`` tokens on average, ``tok2_p`` the mean square): the columns above.

    Two kinds of call share the workers: a decode call is served in a batch of the decode
    calls that arrived during the last batch, or alone after an idle spell (``n = x +
    exp(-x)``, ``x = lambda_w T(n)``); a prefill call is long and served with its own tokens.
    The worker is busy ``rho = lambda_w T(n) / n + lambda_p T_p``. A call that finds every
    worker busy (``rho^c``) waits half the length-biased duration in service, ``E[S^2] (1 +
    cv^2) / (2 E[S] c)`` over decode batches (``Var(n) = lambda_w T / (1 - (lambda_w
    b)^2)``, ``b`` one more call's cost) and prefill calls, then rides in the next batch (the
    calls that arrived during that one). Checked against the request-level engine's per-tick
    latencies (docs/simulator.md)."""
    for i in range(lam.size):
        for j in range(out.shape[1]):
            out[i, j] = 0.0
        if m_kind[i] < 0:  # a join: no work
            continue
        a = (i, k0, k1, share, cores, interf, m_kind, m_f, m_coff, m_ct, m_cm)
        t1 = _batch_ms(a[0], 1.0, 1.0, *a[1:])
        mp = max(tok_p[i], 1.0)
        tp = _batch_ms(a[0], 1.0, mp, *a[1:])
        # a prefill call's second moment: service about linear in its tokens
        tp2 = tp * tp * max(tok2_p[i] / (mp * mp), 1.0)
        out[i, N_BATCH] = 1.0
        out[i, N_T] = t1
        out[i, N_TP] = tp
        if ready[i] <= 0.0:  # nothing serves: every attempt refused
            out[i, N_BLOCK] = 1.0
            out[i, N_DROP] = 1.0
            out[i, N_REJ] = max_retries + 1.0
            out[i, N_L] = t1 / 1000.0
            out[i, N_LP] = tp / 1000.0
            continue
        avail = min(ready[i], 1.0)  # a replica ready during part of the slice
        workers = max(ready[i], 1.0) * par[i]
        lw = lam[i] / workers / 1000.0  # decode calls per ms per worker
        lwp = lam_p[i] / workers / 1000.0
        nmax = max(conc[i] / par[i], 1.0)
        if par[i] == 1.0 and conc[i] <= chain_max and lw + lwp > 0.0:
            # one worker a pod: the batch chain, exact for Poisson arrivals
            _one_worker(lw + lwp, lwp / (lw + lwp), mp, t1, tp, max(int(round(conc[i])), 1),
                        math.sqrt(cv2), a, trans, acc, pmf, chain)
            _tail_out(i, chain[0], chain[1], chain[2], chain[3], chain[4], chain[5], avail,
                      retry_s, cap_s, max_retries, out)
            continue
        n = 1.0
        for _ in range(40):
            x = lw * _batch_ms(a[0], n, n, *a[1:])
            # the arrivals of the last batch, or the first after an idle spell; with c
            # workers a batch forms only while the others are busy too
            nxt = min(1.0 + (x + math.exp(-x) - 1.0) * min(x, 1.0) ** (par[i] - 1.0), nmax)
            if abs(nxt - n) < 1e-4 * n:
                n = nxt
                break
            n = nxt
        t = _batch_ms(a[0], n, n, *a[1:])
        b = max(_batch_ms(a[0], n + 1.0, n + 1.0, *a[1:]) - t, 0.0)  # one more call's cost
        bd = lw / n  # decode batches per ms per worker
        load = bd * t + lwp * tp  # the worker's offered busy fraction
        rho = min(load, 1.0)
        p_busy = rho ** par[i]
        wait = 0.0
        serve = t1
        if load > 0.0:
            # a batch holds the arrivals of the one before: its size varies as
            # Var(n) = lambda T / (1 - (lambda b)^2), b the marginal cost of a call (the
            # fixed cost a batch amortises keeps it bounded)
            var_n = lw * t / max(1.0 - (lw * b) ** 2, _VAR_FLOOR)
            t2 = t * t + b * b * var_n
            lb = (bd * t2 + lwp * tp2) / load  # the length-biased duration in service
            wait = p_busy * 0.5 * lb * (1.0 + cv2) / par[i]
            # then the next batch: the calls that arrived during the one in service
            nn = min(max(1.0, lw * lb), nmax)
            serve = (1.0 - p_busy) * t1 + p_busy * _batch_ms(a[0], nn, nn, *a[1:])
        inside = (lam[i] * (wait + serve) + lam_p[i] * (wait + tp)) / max(ready[i], 1.0) / 1000.0
        block = _tail(inside, p_busy, conc[i])
        if load > 1.0 + 1e-9:  # beyond what full batches serve
            block = max(block, 1.0 - 1.0 / load)
        _tail_out(i, n, rho, wait, serve, tp, block, avail, retry_s, cap_s, max_retries, out)


@njit(cache=True)
def _tail_out(i, n, rho, wait, serve, tp, block, avail, retry_s, cap_s, max_retries, out):
    """Node ``i``'s columns from its batch size, busy fraction, wait and own batch times (ms)
    and the share of attempts refused while ready (``avail`` of the slice): refused attempts
    retry after the jittered backoff's mean (x 0.75), up to ``max_retries`` times."""
    block = min(1.0 - (1.0 - block) * avail, 1.0)
    delay = 0.0
    rej = 0.0
    pa = 1.0
    for r in range(max_retries + 1):
        pa *= block
        rej += pa
        if r < max_retries:
            delay += pa * min(retry_s * 2.0 ** r, cap_s) * 0.75
    out[i, N_BATCH] = n
    out[i, N_T] = serve
    out[i, N_TP] = tp
    out[i, N_RHO] = rho
    out[i, N_WAIT] = wait / 1000.0
    out[i, N_L] = (wait + serve) / 1000.0 + delay
    out[i, N_LP] = (wait + tp) / 1000.0 + delay
    out[i, N_BLOCK] = block
    out[i, N_DROP] = pa
    out[i, N_REJ] = rej
    out[i, N_ADMIT] = 1.0 - pa


@njit(cache=True)
def _pass_time(stage_lat, st_first, pred_off, preds, sinks, rpc):
    """The critical path of one pass (s): stages in topological order, each starting
    ``rpc`` after its slowest predecessor (a source at once)."""
    n = stage_lat.size
    finish = np.empty(n)
    for s in range(n):
        start = 0.0
        if pred_off[s + 1] > pred_off[s]:
            start = -1.0
            for j in range(pred_off[s], pred_off[s + 1]):
                start = max(start, finish[preds[j]])
            start += rpc
        finish[s] = start + stage_lat[s]
    end = 0.0
    for s in sinks:
        end = max(end, finish[s])
    return end


@njit(cache=True)
def _wait_var(wait, rho, par, e):
    """The variance of node ``e``'s wait (s^2): a call waits with chance ``p = rho ^ c`` for an
    about exponential residual of mean ``wait / p``."""
    p = rho[e] ** par[e]
    return wait[e] * wait[e] * (2.0 / p - 1.0) if p > 1e-9 else 0.0


@njit(cache=True)
def _stage_latency(lat, t_ms, wait, rho, par, v, st_off, st_nodes, st_moe, st_k, max_of, cv):
    """Per stage of a decode pass: its node's latency, or at an MoE stage the mean over the
    experts a token picks plus the expected maximum of ``k`` draws of their spread: the
    spread of their means, the service noise and the wait's own (:func:`_wait_var`). Also
    each stage's variance, for the spread of a request's pass times."""
    n = st_off.size - 1
    out = np.empty(n)
    svar = np.empty(n)  # each stage's variance, for the spread of the pass time
    for s in range(n):
        lo, hi = st_off[s], st_off[s + 1]
        if not st_moe[s]:
            e = st_nodes[lo]
            out[s] = lat[e]
            noise = cv * t_ms[e] / 1000.0
            svar[s] = noise * noise + _wait_var(wait, rho, par, e)
            continue
        k = st_k[s]
        tot = 0.0
        mean = 0.0
        for j in range(lo, hi):
            tot += v[st_nodes[j]]
            mean += v[st_nodes[j]] * lat[st_nodes[j]]
        mean /= max(tot, 1e-12)
        var = 0.0
        for j in range(lo, hi):
            e = st_nodes[j]
            noise = cv * t_ms[e] / 1000.0
            var += v[e] / max(tot, 1e-12) * ((lat[e] - mean) ** 2 + noise * noise
                                             + _wait_var(wait, rho, par, e))
        out[s] = mean + max_of[min(k, max_of.size - 1)] * math.sqrt(var)
        svar[s] = var
    return out, svar


@njit(cache=True)
def _prefill_times(*args):
    """:func:`_prefill_model` over arrays that count no references (smoelib/sim/borrow.py)."""
    return _prefill_model(*borrowed(args))


@njit(cache=True)
def _prefill_model(tokens, st_off, st_nodes, st_moe, hot, res, k0, k1, share, cores, interf,
                   m_kind, m_f, m_coff, m_ct, m_cm, pred_off, preds, sinks, rpc):
    """The pass time (s) of a prefill of ``tokens[i]`` tokens at the slice's node state:
    per stage, the wait and retries at the node, then the request's own call (a segment's with
    all its tokens, an MoE stage's at its hottest expert with that expert's share)."""
    n_st = st_off.size - 1
    out = np.empty(tokens.size)
    lat = np.empty(n_st)
    for r in range(tokens.size):
        for s in range(n_st):
            lo = st_off[s]
            node = st_nodes[lo]
            m = tokens[r]
            if st_moe[s]:
                node = hot[s]
                m = max(1.0, tokens[r] * res[node, 1])
            if m_kind[node] < 0:
                lat[s] = 0.0
                continue
            own = _batch_ms(node, 1.0, m, k0, k1, share, cores, interf, m_kind, m_f, m_coff,
                            m_ct, m_cm) / 1000.0
            lat[s] = res[node, 0] + own
        out[r] = _pass_time(lat, st_off, pred_off, preds, sinks, rpc)
    return out


class _Plan:
    """A :class:`~smoelib.sim.engine.StagePlan` as flat arrays for the compiled helpers."""

    def __init__(self, plan: StagePlan, top_k: list[int]):
        self.st_off = np.concatenate([[0], np.cumsum([len(x) for x in plan.nodes])]).astype(
            np.int64)
        self.st_nodes = np.concatenate([np.asarray(x, np.int64) for x in plan.nodes])
        self.st_moe = np.asarray(plan.moe, np.bool_)
        self.st_k = np.asarray([top_k[plan.layer_of[s]] if plan.moe[s] else 1
                                for s in range(len(plan.stages))], np.int64)
        self.pred_off = np.concatenate([[0], np.cumsum([len(p) for p in plan.preds])]).astype(
            np.int64)
        self.preds = np.asarray([q for p in plan.preds for q in p], np.int64)
        self.sinks = np.asarray(plan.sinks, np.int64)
        self.segment_nodes = np.asarray([x[0] for x, moe in zip(plan.nodes, plan.moe,
                                                                  strict=True) if not moe],
                                        np.int64)
        self.layers = [(plan.layer_of[s], np.asarray(plan.nodes[s], np.int64))
                       for s in range(len(plan.stages)) if plan.moe[s]]
        self.moe_stages = np.flatnonzero(self.st_moe)


class FluidEngine:
    """The request-level engines' interface (``run``, the per-request arrays, the
    counters), served by per-slice queueing arithmetic. Same constructor as
    :class:`~smoelib.sim.engine.Engine`."""

    def __init__(self, dag, trace, *, models, router, params: dict, rng: np.random.Generator):
        self.dag = dag
        self.times = trace.times_s
        n = self.times.size
        gen = trace.generated if trace.generated is not None else np.zeros(n, np.int64)
        self.task = trace.task if trace.task is not None else np.zeros(n, np.int8)
        self.prefill = work.prefill_tokens(dag, trace.tokens, gen).astype(float)
        self.decodes = work.decode_passes(dag, trace.tokens, gen).astype(float)
        self.chunks = work.n_chunks(dag, self.prefill.astype(np.int64)).astype(float)
        self.router = router
        self.rng = rng
        self._snapshot = rng.spawn(1)[0]  # its own stream: the instants do not shift the rest
        self.models = models
        self.par = params["parallelism"]
        self.rpc_s = params["rpc_overhead_ms"] / 1000.0
        self.cv = float(params["service_cv"])
        self._noise_cdf = noise_cdf_table(self.cv)
        self.retry_s = params["retry_backoff_ms"] / 1000.0
        self.retry_cap_s = params["retry_cap_ms"] / 1000.0
        self.max_retries = int(params["max_retries"])
        # pods of one worker as a batch chain (simulator.fluid_pods: chain), or arithmetic
        self.chain_max = CHAIN_MAX if params.get("fluid_pods") == "chain" else 0
        if params.get("invocation", "per-sequence") != "per-sequence":
            raise ValueError("the fluid engine models per-sequence invocation")
        top_k = list(router.widths)
        if dag.kind == "encoder-decoder":
            parts = dag.stage_parts
            first = StagePlan(dag, {s for s, p in parts.items() if p == "encoder"})
            nxt = StagePlan(dag, {s for s, p in parts.items() if p == "decoder"})
        else:
            first = nxt = StagePlan(dag)
        self.plan_first, self.plan_next = first, nxt  # as the request-level engines name them
        self.first, self.next = _Plan(first, top_k), _Plan(nxt, top_k)
        self.slo = dag.slo
        self.n_nodes = len(dag.nodes)
        cols = model_columns(models)
        self.model_arrays = cols[:5]
        self.handler, self.per_token = cols[5], cols[6]
        # per request
        self.ttft = np.full(n, np.nan)
        self.e2e = np.full(n, np.nan)
        self.tpot = np.full(n, np.nan)
        self.dropped = np.zeros(n, dtype=bool)
        self.first_t = np.full(n, np.nan)  # when the first token is out
        self.left = self.decodes.copy()  # decode passes still to make
        self.pass_var = np.zeros(n)  # the variance of the decode passes made so far (s^2)
        self.active = np.zeros(0, np.int64)  # requests arrived and not yet ended
        self.next_req = 0
        self.tau = None  # the last slice's decode pass time (s)
        self._ttft_guess = 0.05  # the last slice's mean TTFT (s)
        self.calls = 0
        self.rejected = 0
        self.retries = 0
        self.batches = 0
        self._acc = np.zeros(4)  # fractional calls, rejections, retries, batches carried
        self.node_inflight = np.zeros(self.n_nodes)
        index = {x: i for i, x in enumerate(dag.nodes)}
        self._layer_nodes = [np.asarray([index[x] for x in names], np.int64)
                             for names in dag.moe_layers.values()]
        self._incl: dict[tuple[int, int], np.ndarray] = {}
        self._scratch = chain_scratch()

    # ---- per slice -----------------------------------------------------------------------
    def run(self, t0: float, t1: float, cluster: Cluster, tel: Telemetry) -> None:
        """One control tick, in one slice, or in slices of about ``SUB_S`` seconds where
        its arrivals are uneven (a burst lasts seconds, and the tick's mean load would
        understate the queueing it causes): when a second's arrivals exceed the tick's mean
        by more than Poisson noise (3 standard deviations and 2), or the requests decoding
        at its end differ from those at its start by more than a fifth (and 3). Routing
        shares are the tick's (popularity moves in 10 s drift steps)."""
        hi = max(self.next_req, int(np.searchsorted(self.times, t1, side="left")))
        shares = self._token_shares(t0, t1, np.arange(self.next_req, hi))
        n = max(1, int(round((t1 - t0) / SUB_S)))
        if n > 1:
            counts = np.bincount(((self.times[self.next_req:hi] - t0) * n / (t1 - t0))
                                 .astype(np.int64).clip(0, n - 1), minlength=n)
            mean = counts.mean()
            # or the requests decoding at its end (at the last pace) differ from its start's
            act = self.active[~self.dropped[self.active] & (self.left[self.active] > 0)]
            now = act.size
            then = int((np.nan_to_num(self.first_t[act], nan=t0)
                        + self.left[act] * (self.tau or 0.05) > t1).sum()) + counts.sum()
            uneven = counts.max() > mean + 3.0 * math.sqrt(mean) + 2.0
            n = n if uneven or abs(then - now) > 0.2 * now + 3 else 1
        for j in range(n):
            self._slice(t0 + (t1 - t0) * j / n, t0 + (t1 - t0) * (j + 1) / n, cluster, tel,
                        shares)

    def _slice(self, t0: float, t1: float, cluster: Cluster, tel: Telemetry,
               shares: tuple[np.ndarray, np.ndarray]) -> None:
        dt = t1 - t0
        lo = self.next_req
        hi = max(lo, int(np.searchsorted(self.times, t1, side="left")))
        if hi > lo:
            ks, cnt = np.unique((self.times[lo:hi] // tel.dt).astype(np.int64),
                                return_counts=True)
            for k_, c_ in zip(ks, cnt, strict=True):
                tel.add_requests(float(k_) * tel.dt, int(c_))
        new = np.arange(lo, hi)
        self.next_req = hi
        state = self._node_config(t0, t1, cluster)
        v_tok, q_tok = shares
        first, nxt = self.first, self.next
        # prefill load of the arrivals: per node calls and tokens per second
        calls_pre = np.zeros(self.n_nodes)
        tok_pre = np.zeros(self.n_nodes)
        tok2_pre = np.zeros(self.n_nodes)  # sum over calls of their tokens squared
        if new.size:
            c = self.chunks[new]
            p = self.prefill[new]
            calls_pre[first.segment_nodes] += c.sum()
            tok_pre[first.segment_nodes] += p.sum()
            tok2_pre[first.segment_nodes] += (p * p / c).sum()
            for li, nodes in first.layers:
                share = q_tok[nodes]  # of a chunk's tokens x top_k slots
                slots = (p / c * self.router.widths[li])[:, None]
                touched = 1.0 - (1.0 - share[None, :]) ** slots
                calls = touched * c[:, None]
                toks = np.minimum(slots * share[None, :], (p / c)[:, None]) * c[:, None]
                calls_pre[nodes] += calls.sum(0)
                tok_pre[nodes] += toks.sum(0)
                tok2_pre[nodes] += (toks * toks / np.maximum(calls, 1e-12)).sum(0)
        tok_p = np.where(calls_pre > 0, tok_pre / np.maximum(calls_pre, 1e-12), 1.0)
        tok2_p = np.where(calls_pre > 0, tok2_pre / np.maximum(calls_pre, 1e-12), 1.0)
        calls_pre /= dt
        # decode load: requests decoding during the slice (time-averaged)
        act = self.active
        dec = act[(self.left[act] > 0) & ~self.dropped[act]]
        # the arrivals decode in the slice too (a conv request's decode is about one slice):
        # from their arrival plus the last slice's mean TTFT until their TTFT is solved
        dec_start = np.concatenate([self.first_t[dec], self.times[new] + self._ttft_guess])
        dec_left = np.concatenate([self.left[dec], self.decodes[new]])
        tau = self.tau if self.tau is not None else 0.05
        v_dec = np.zeros(self.n_nodes)
        v_dec[nxt.segment_nodes] = 1.0
        for _, nodes in nxt.layers:
            v_dec[nodes] = v_tok[nodes]
        res = np.zeros((self.n_nodes, 2))
        out = np.zeros((self.n_nodes, NODE_COLUMNS))
        args = (*state, self.cv ** 2, self.retry_s, self.retry_cap_s, self.max_retries,
                *self.model_arrays)
        for it in range(_FIXED_POINT):
            start = np.maximum(dec_start, t0)
            busy = np.clip(np.minimum(t1, start + dec_left * tau) - start, 0, None)
            n_dec = busy.sum() / dt
            lam_dec = n_dec / tau * v_dec
            _nodes(lam_dec, calls_pre, tok_p, tok2_p, *args, out, self.chain_max,
                   *self._scratch)
            stage, svar = _stage_latency(out[:, N_L], out[:, N_T], out[:, N_WAIT], out[:, N_RHO],
                                   state[1], v_dec, nxt.st_off, nxt.st_nodes,
                                   nxt.st_moe, nxt.st_k, _MAX_OF, self.cv)
            new_tau = _pass_time(stage, nxt.st_off, nxt.pred_off, nxt.preds, nxt.sinks,
                                 self.rpc_s) + self.rpc_s
            if not dec_left.any():
                tau = new_tau
                break
            if abs(new_tau - tau) < _TAU_TOL * tau:
                break
            tau = new_tau if it == 0 and self.tau is None else 0.5 * tau + 0.5 * new_tau
        self.tau = tau
        pass_var = float(svar.sum())  # the stages one after another, independent
        # the arrivals' first tokens
        if new.size:
            res[:, 0] = out[:, N_LP] - out[:, N_TP] / 1000.0  # wait and retries
            hot = np.zeros(len(first.st_moe), np.int64)
            for s, (li, nodes) in zip(first.moe_stages, first.layers, strict=True):
                hot[s] = nodes[np.argmax(q_tok[nodes])]
                # a chunk token's chance to pick it (its slots, at most one per token)
                res[nodes, 1] = np.minimum(1.0, q_tok[nodes] * self.router.widths[li])
            c = self.chunks[new]
            per = _prefill_times(self.prefill[new] / c, first.st_off, first.st_nodes,
                                 first.st_moe, hot, res, *state[2:7], *self.model_arrays,
                                 first.pred_off,
                                 first.preds, first.sinks, self.rpc_s)
            ttft = c * per + (c - 1) * self.rpc_s
            self.ttft[new] = ttft
            self._ttft_guess = float(ttft.mean())
            self.first_t[new] = self.times[new] + ttft
            self.active = np.concatenate([self.active, new])
        self._advance(t0, t1, tau, pass_var, out, v_dec, calls_pre, tel)
        self._telemetry(t0, dt, out, lam_dec, calls_pre, tok_p, state, tel)

    def _node_config(self, t0: float, t1: float, cluster: Cluster) -> tuple:
        """Per node over the slice: ready replicas (time-weighted), workers, handler
        coefficients, GPU share, cores per worker, interference, max_inflight."""
        c, n = cluster.cols, cluster.n
        node = c["node"][:n]
        w = np.clip(np.minimum(c["end"][:n], t1) - np.maximum(c["ready"][:n], t0), 0,
                    None) / (t1 - t0)
        nn = self.n_nodes
        ready = np.bincount(node, weights=w, minlength=nn)
        wsum = np.maximum(ready, 1e-12)
        par = self.par.astype(float)
        mean = lambda x: np.where(ready > 0, np.bincount(node, weights=w * x,  # noqa: E731
                                                         minlength=nn) / wsum, 0.0)
        cpu = mean(c["cpu"][:n])
        share = mean(c["share"][:n])
        conc = np.maximum(mean(c["conc"][:n].astype(float)), 1.0)
        interf = np.where(ready > 0, mean(cluster.interference(t0)), 1.0)
        cpu = np.where(ready > 0, cpu, 1.0)
        slow = handler_slowdown(cpu, par)
        return (ready, par, self.handler * slow, self.per_token * slow, share,
                cpu / np.maximum(par, 1), interf, conc)

    def _token_shares(self, t0: float, t1: float, new: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Per expert node: the chance that one decode token picks it, and its share of a
        prefill chunk's token slots. A request routes with the popularity of its class at its
        arrival (:mod:`smoelib.sim.routing`), so decode inclusion is the mean over the
        requests in flight of their (class, drift step)'s; the arrivals' prefill shares are
        their own."""
        router = self.router
        rs = np.concatenate([self.active, new])
        v = np.zeros(self.n_nodes)
        q = np.zeros(self.n_nodes)
        if not rs.size:
            rs = np.asarray([min(self.next_req, self.times.size - 1)], np.int64)
        # weights: the passes each makes in the slice at the last slice's pace
        tau = self.tau if self.tau is not None else 0.05
        start = np.where(np.isnan(self.first_t[rs]), self.times[rs] + self._ttft_guess,
                         self.first_t[rs])
        start = np.maximum(start, t0)
        made = np.minimum(self.left[rs], np.clip(t1 - start, 0.0, None) / tau)
        weight = np.where(self.dropped[rs], 0.0, made) + 1e-9
        steps = router.drift_step(self.times[rs])
        keys, group = np.unique(np.stack([steps, self.task[rs].astype(np.int64)]), axis=1,
                                return_inverse=True)
        w = np.bincount(group.ravel(), weights=weight)
        incl = sum(c * self._inclusion(int(st), int(k))
                   for (st, k), c in zip(keys.T, w, strict=True)) / w.sum()
        arrivals = new if new.size else rs[:1]
        ks, cnt = np.unique(self.task[arrivals].astype(np.int64), return_counts=True)
        at = float(self.times[arrivals].mean())
        share = sum(c * router.chunk_shares(at, int(k))
                    for k, c in zip(ks, cnt, strict=True)) / cnt.sum()
        for li, idx in enumerate(self._layer_nodes):
            v[idx] = incl[li, :idx.size]
            q[idx] = share[li, :idx.size]
        return v, q

    def _inclusion(self, step: int, task: int) -> np.ndarray:
        key = (step, task)
        got = self._incl.get(key)
        if got is None:
            if len(self._incl) > 4096:  # requests in flight span a few drift steps
                self._incl.clear()
            got = self._incl[key] = self.router.decode_inclusion(step, task)
        return got

    def _advance(self, t0, t1, tau, pass_var, out, v_dec, calls_pre, tel) -> None:
        """Decode passes made in the slice; requests that end or drop in it."""
        act = self.active
        firsts = act[(self.first_t[act] >= t0) & (self.first_t[act] < t1)]
        start = np.maximum(self.first_t[act], t0)
        left = self.left[act]
        can = np.clip(t1 - start, 0, None) / tau
        made = np.minimum(left, can)
        # drops: the chance each call of the slice's passes is refused every time
        per_pass = float((v_dec * out[:, N_DROP]).sum())
        p_first = float(out[self.first.st_nodes, N_DROP].sum())  # a prefill touches them all
        first_here = (self.first_t[act] >= t0) & (self.first_t[act] < t1)
        hazard = made * per_pass + np.where(first_here, p_first, 0.0)
        drop = np.zeros(act.size, bool)
        if np.any(hazard > 0):
            u = self.rng.random(act.size)
            drop = (u < -np.expm1(-hazard)) & ~self.dropped[act]
        self.left[act] = left - made
        self.pass_var[act] += made * pass_var
        done = (self.left[act] <= 1e-9) & (start < t1) & ~drop & ~self.dropped[act]
        end_t = start + left * tau
        r_done = act[done]
        # a request's own passes vary about the slice's mean (service noise, waits, which
        # experts its tokens pick): its decode time spreads by the sum of their variances
        spread = np.sqrt(self.pass_var[r_done]) * self.rng.standard_normal(r_done.size)
        self.e2e[r_done] = np.maximum(end_t[done] + spread, self.first_t[r_done]) \
            - self.times[r_done]
        d = self.decodes[r_done]
        self.tpot[r_done] = np.where(d > 0, (self.e2e[r_done] - self.ttft[r_done])
                                     / np.maximum(d, 1), 0.0)
        r_drop = act[drop]
        self.dropped[r_drop] = True
        drop_t = t0 + self.rng.random(r_drop.size) * (t1 - t0)
        before = self.first_t[r_drop] > drop_t  # dropped before its first token
        self.ttft[r_drop[before]] = np.nan
        keep = ~(done | drop | self.dropped[act])
        self.active = act[keep]
        firsts = firsts[~self.dropped[firsts]]
        ends_t = np.concatenate([end_t[done], drop_t])
        ends_r = np.concatenate([r_done, r_drop])
        if firsts.size:
            tel.add_pass_latency(self.first_t[firsts], "ttft_hist", self.ttft[firsts])
        if ends_r.size:
            dropped = self.dropped[ends_r]
            tel.add_request_ends(ends_t, ttft=self.ttft[ends_r],
                                 tpot=np.where(dropped, np.inf, self.tpot[ends_r]),
                                 e2e=np.where(dropped, np.inf, self.e2e[ends_r]),
                                 met=self.meets_slo(ends_r))

    def _telemetry(self, t0, dt, out, lam_d, lam_p, tok_p, state, tel) -> None:
        """Per-node counters of the slice, as the request-level engines bin them."""
        ready, par = state[0], state[1]
        admit = out[:, N_ADMIT]
        calls_d, calls_p = lam_d * dt * admit, lam_p * dt * admit
        calls = calls_d + calls_p
        batches = calls_d / np.maximum(out[:, N_BATCH], 1.0) + calls_p
        busy = out[:, N_RHO] * ready * par * dt
        rejected = (lam_d + lam_p) * dt * out[:, N_REJ]
        hist = np.zeros((self.n_nodes, CALL_BOUNDS_S.size))
        # an admitted attempt's latency, as the request-level engines time a call from its
        # admission: the wait and the service, not the backoff of refused attempts before it
        wait = out[:, N_WAIT]
        lat_d = wait + out[:, N_T] / 1000.0
        lat_p = wait + out[:, N_TP] / 1000.0
        for n_calls, service in ((calls_d, out[:, N_T] / 1000.0),
                                 (calls_p, out[:, N_TP] / 1000.0)):
            _add_latencies(hist, CALL_BOUNDS_S, n_calls, service, wait, self.cv,
                           self._noise_cdf)
        k = int(math.floor(t0 / tel.dt + 1e-9))
        tel.add_tick(k, {"calls": calls, "tokens": calls_d + calls_p * tok_p, "busy_s": busy,
                         "batches": batches, "rejected": rejected, "lat_hist": hist,
                         "lat_sum": calls_d * lat_d + calls_p * lat_p})
        retried = (lam_d + lam_p) * dt * (out[:, N_REJ] - out[:, N_DROP])
        self._acc += (calls.sum(), rejected.sum(), retried.sum(), batches.sum())
        self.calls, self.rejected, self.retries, self.batches = (int(x) for x in self._acc)
        self.node_inflight = (lam_d * lat_d + lam_p * lat_p) * admit

    # ---- per request ---------------------------------------------------------------------
    meets_slo = Engine.meets_slo  # one rule: finished, TTFT and TPOT within the SLO

    def inflight_at(self, t: float, n_nodes: int, cluster: Cluster) -> np.ndarray:
        """Calls in flight per node at one instant, as the request-level engines count them: a
        Poisson count around the slice's mean (Little's law). The mean alone reads low to an
        autoscaler that rounds up and holds the highest recent proposal: an in-flight HPA
        target of 0.25 calls per replica saw 0.7x the request-level engine's cost."""
        return self._snapshot.poisson(np.maximum(self.node_inflight, 0.0)).astype(float)
