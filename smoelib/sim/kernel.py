"""The compiled core of the request-level engine (numba): the event loop of
:mod:`smoelib.sim.engine` over flat arrays, per-sequence invocation.

The same events, in the same order, with the same arithmetic as the reference
:class:`~smoelib.sim.engine.Engine`: one binary heap of events ordered by (time, push
sequence), call arrivals, batch completions and request arrivals; a replica's FIFO (a linked
list of calls), its workers taking every waiting call as one batch; 429 retries with the same
jittered backoff; the stage and pass bookkeeping of a request's passes. What the kernel needs
from Python (the routing of each request, the pods serving each node, the random numbers) is
prepared by :class:`~smoelib.sim.compiled.CompiledEngine` in arrays before a slice is served.

:func:`serve` runs events until the next one is at or after ``t1``, or until one would need
more room than an array has (more random numbers, heap, call or pass slots, log space): then it
returns a status code saying which, without touching that event, and the caller grows the
array (or flushes the log) and calls again. Compiled once and cached on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from smoelib.sim.borrow import borrowed

__all__ = ["serve", "push_requests", "ffn_ms", "OK", "NEED_RANDOM", "NEED_HEAP", "NEED_CALLS",
           "NEED_SLOTS", "NEED_LOG", "SCALARS"]

ARRIVE, DONE, REQUEST = 0, 1, 2
OK, NEED_RANDOM, NEED_HEAP, NEED_CALLS, NEED_SLOTS, NEED_LOG = 0, 1, 2, 3, 4, 5

# the scalar state (one int64 array), by index
(HEAP, SEQ, CALLS, REJECTED, RETRIES, BATCHES, CALL_FREE, SLOT_FREE, UI, NI,
 LOG_REQ) = range(11)
SCALARS = 11

# the model columns (one float row per node)
(M_GPU, M_WB, M_CWB, M_FPT, M_GBW, M_GPEAK, M_LAUNCH, M_CBW, M_CPEAK, M_SBW, M_BASE,
 M_PER_TOKEN) = range(12)
MODEL_COLUMNS = 12

# pod columns: integers (kept across slices; node and concurrency refreshed per slice) and
# floats (per slice)
PI_N, PI_FREE, PI_HEAD, PI_TAIL, PI_LEN, PI_NODE, PI_CONC = range(7)
POD_INTS = 7
PF_READY, PF_END, PF_K0, PF_K1, PF_SHARE, PF_CORES, PF_INTERF = range(7)
POD_FLOATS = 7
# stage columns (global stage ids over both plans); successors are g_succ[G_SUCC:G_SUCC_END]
G_MOE, G_LAYER, G_NOFF, G_NPREDS, G_SUCC, G_SUCC_END = range(6)
STAGE_COLUMNS = 6
# call columns (a group's or a batch's head also holds its size, a batch's head its pod)
C_REQ, C_STAGE, C_NODE, C_TOKENS, C_ATTEMPT, C_NEXT, C_COUNT, C_PID = range(8)
CALL_COLUMNS = 8
# per-node counters of the slice (its tick), binned as the events happen
A_CALLS, A_TOKENS, A_BUSY, A_BATCHES, A_REJECTED, A_LAT_SUM = range(6)
COUNTERS = 6
# pass-slot meta columns
P_INDEX, P_PLAN, P_SINKS, P_TOKENS = range(4)
# request-log kinds
FIRST, END, DROP = 0, 1, 2


@njit(cache=True, inline="always")
def ffn_ms(kind, f, coff, ct, cm, node, n, share, cores):
    """The FFN time (ms) of ``n`` tokens on ``node`` at GPU ``share`` or ``cores`` (the
    arithmetic of :meth:`~smoelib.core.service.ServiceModel.ffn_ms`, scalar)."""
    cores = max(cores, 1e-3)
    gpu = share > 0 and f[node, M_GPU] > 0
    s = share if gpu else 1.0
    bw = min(1.0, s / f[node, M_SBW]) if gpu else min(1.0, cores)
    compute = s if gpu else cores
    k = kind[node]
    if k == 0:
        mem = (f[node, M_WB] / f[node, M_GBW] if gpu else f[node, M_CWB] / f[node, M_CBW]) / bw
        peak = (f[node, M_GPEAK] if gpu else f[node, M_CPEAK]) * compute
        t = max(mem, f[node, M_FPT] * n / peak)
        return (f[node, M_LAUNCH] if gpu else 0.0) + t
    if k == 1:
        flat = f[node, M_BASE]
        rest = f[node, M_PER_TOKEN] * n
    else:
        lo, hi = coff[node], coff[node + 1]
        x = float(n)
        if x <= ct[lo]:
            total = cm[lo]
        elif x > ct[hi - 1]:
            slope = (cm[hi - 1] - cm[hi - 2]) / (ct[hi - 1] - ct[hi - 2])
            total = cm[hi - 1] + slope * (x - ct[hi - 1])
        elif x == ct[hi - 1]:
            total = cm[hi - 1]
        else:
            j = lo
            while ct[j + 1] <= x:
                j += 1
            slope = (cm[j + 1] - cm[j]) / (ct[j + 1] - ct[j])
            total = slope * (x - ct[j]) + cm[j]
        flat = min(total, cm[lo])
        rest = total - flat
    return flat / bw + rest / compute


# ---- the event heap: (time, push sequence) keys, the event as ``a * 4 + kind`` ----------
# (its size ``nh`` and the last sequence number ``seq`` live in registers: passed and returned)
@njit(cache=True, inline="always")
def _push(ht, hs, hc, nh, seq, t, kind, a):
    if nh >= ht.size:
        raise IndexError("event heap overflow")
    seq += 1
    i = nh
    while i > 0:
        p = (i - 1) >> 1
        tp = ht[p]
        if tp < t or (tp == t and hs[p] < seq):
            break
        ht[i] = tp
        hs[i] = hs[p]
        hc[i] = hc[p]
        i = p
    ht[i] = t
    hs[i] = seq
    hc[i] = a * 4 + kind
    return nh + 1, seq


@njit(cache=True, inline="always")
def _pop(ht, hs, hc, nh):
    """Remove the heap's top (the caller has read it); returns the new size."""
    n = nh - 1
    if n == 0:
        return n
    t, s, v = ht[n], hs[n], hc[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        tc = ht[c]
        if c + 1 < n:
            t2 = ht[c + 1]
            if t2 < tc or (t2 == tc and hs[c + 1] < hs[c]):
                c += 1
                tc = t2
        if tc < t or (tc == t and hs[c] < s):
            ht[i] = tc
            hs[i] = hs[c]
            hc[i] = hc[c]
            i = c
        else:
            break
    ht[i] = t
    hs[i] = s
    hc[i] = v
    return n


@njit(cache=True)
def push_requests(st, ht, hs, hc, times, lo, hi):
    """The arrivals of requests ``lo..hi-1`` (in order)."""
    nh, seq = st[HEAP], st[SEQ]
    for r in range(lo, hi):
        nh, seq = _push(ht, hs, hc, nh, seq, times[r], REQUEST, r)
    st[HEAP], st[SEQ] = nh, seq


# ---- calls and the request log --------------------------------------------------------------
@njit(cache=True, inline="always")
def _new_call(st, cfree, cv, r, g, node, tokens):
    k = st[CALL_FREE] - 1
    if k < 0:
        raise IndexError("call pool overflow")
    st[CALL_FREE] = k
    c = cfree[k]
    cv[c, C_REQ] = r
    cv[c, C_STAGE] = g
    cv[c, C_NODE] = node
    cv[c, C_TOKENS] = tokens
    cv[c, C_ATTEMPT] = 0
    cv[c, C_NEXT] = -1
    cv[c, C_COUNT] = 1
    return c


@njit(cache=True, inline="always")
def _free_call(st, cfree, c):
    cfree[st[CALL_FREE]] = c
    st[CALL_FREE] += 1


@njit(cache=True, inline="always")
def _bucket(buckets, x):
    """``np.searchsorted(buckets, x, side="left")``: the first bucket at or above ``x``."""
    lo, hi = 0, buckets.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if buckets[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, inline="always")
def _log_req(st, lq_t, lq_v, t, r, kind):
    i = st[LOG_REQ]
    lq_t[i] = t
    lq_v[i, 0] = r
    lq_v[i, 1] = kind
    st[LOG_REQ] = i + 1


@njit(cache=True, inline="always")
def _release(r, st, req_slot, sfree):
    slot = req_slot[r]
    if slot >= 0:
        sfree[st[SLOT_FREE]] = slot
        st[SLOT_FREE] += 1
        req_slot[r] = -1


# ---- the event loop ---------------------------------------------------------------------------
@njit(cache=True)
def serve(*args):
    """Serve events before ``t1`` (the first argument; the rest as :func:`_serve` takes
    them); returns a status code (OK when done)."""
    return _serve(*borrowed(args))


@njit(cache=True)
def _serve(t1, st, ht, hs, hc, cv, cadm, cfree,
           gst, g_succ, g_nodes, plan_off, src_off, src, sink_off, sink,
           times, prefill, decodes, n_chunks, chunk, ttft, e2e, tpot, dropped, req_slot,
           dec_off, dec, kt, ko, kw, chk_off, chk_ptr, chk_e, chk_n, n_layers,
           s_preds, s_calls, s_ready, s_done, s_meta, sfree,
           pi, pf, cand_off, cand_ids, m_kind, m_f, m_coff, m_ct, m_cm, ubuf, nbuf, lq_t, lq_v,
           acc, lat_hist, buckets, node_inflight, max_batch, par, rpc_s, retry_s, retry_cap_s,
           max_retries, emit_max):
    """Serve events before ``t1``; returns a status code (OK when done). Calls, tokens, busy
    seconds, batches, 429s and call latencies are added to ``acc`` and ``lat_hist`` (the
    slice's tick); first tokens, ends and drops go to the request log."""
    cap_req = lq_t.size
    stack_g = np.empty(s_calls.shape[1] + 1, np.int64)
    stack_t = np.empty(s_calls.shape[1] + 1)
    nh, seq = st[HEAP], st[SEQ]
    status = OK
    while nh > 0 and ht[0] < t1:
        t = ht[0]
        code = hc[0]
        kind = code & 3
        a = code >> 2
        count = cv[a, C_COUNT] if kind != REQUEST else 1
        # room for the worst this event can do, checked before it starts
        if st[UI] + 2 * count > ubuf.size or st[NI] + count > nbuf.size:
            status = NEED_RANDOM
            break
        width = count * emit_max + 1
        if nh + width + 1 > ht.size:
            status = NEED_HEAP
            break
        if st[CALL_FREE] < width:
            status = NEED_CALLS
            break
        if kind == REQUEST and st[SLOT_FREE] < 1:
            status = NEED_SLOTS
            break
        if st[LOG_REQ] + 2 * count + 2 > cap_req:
            status = NEED_LOG
            break
        nh = _pop(ht, hs, hc, nh)

        if kind == REQUEST:
            r = a
            k = st[SLOT_FREE] - 1
            st[SLOT_FREE] = k
            req_slot[r] = sfree[k]
            nh, seq = _complete(
                r, t, 0, True, st, ht, hs, hc, nh, seq, cv, cfree, gst, g_succ, g_nodes,
                plan_off, src_off, src, sink_off, sink, times, prefill, decodes, n_chunks, chunk,
                ttft, e2e, tpot, dropped, req_slot, dec_off, dec, kt, ko, kw, chk_off, chk_ptr,
                chk_e, chk_n, n_layers, s_preds, s_calls, s_ready, s_done, s_meta, sfree,
                stack_g, stack_t, lq_t, lq_v, rpc_s)
            continue

        if kind == ARRIVE:  # the calls one stage emitted, in order
            c = a
            for _ in range(count):
                nxt = cv[c, C_NEXT]
                r = cv[c, C_REQ]
                if dropped[r]:
                    _free_call(st, cfree, c)
                    c = nxt
                    continue
                node = cv[c, C_NODE]
                # the ready replicas of the node now, in the pod table's order: one at random
                lo, hi = cand_off[node], cand_off[node + 1]
                m = 0
                for j in range(lo, hi):
                    p = cand_ids[j]
                    if pf[p, PF_READY] <= t < pf[p, PF_END]:
                        m += 1
                pid = -1
                if m > 0:
                    pick = int(ubuf[st[UI]] * m)
                    st[UI] += 1
                    for j in range(lo, hi):
                        p = cand_ids[j]
                        if pf[p, PF_READY] <= t < pf[p, PF_END]:
                            if pick == 0:
                                pid = p
                                break
                            pick -= 1
                    if pi[pid, PI_N] >= pi[pid, PI_CONC]:
                        pid = -1
                if pid < 0:
                    st[REJECTED] += 1
                    acc[node, A_REJECTED] += 1.0
                    attempt = cv[c, C_ATTEMPT]
                    if attempt >= max_retries:
                        if not dropped[r]:
                            dropped[r] = True
                            _log_req(st, lq_t, lq_v, t, r, DROP)
                            _release(r, st, req_slot, sfree)
                        _free_call(st, cfree, c)
                        c = nxt
                        continue
                    st[RETRIES] += 1
                    delay = min(retry_s * 2.0 ** attempt, retry_cap_s)
                    cv[c, C_ATTEMPT] = attempt + 1
                    cv[c, C_NEXT] = -1
                    cv[c, C_COUNT] = 1
                    u = ubuf[st[UI]]
                    st[UI] += 1
                    nh, seq = _push(ht, hs, hc, nh, seq, t + delay * (0.5 + 0.5 * u), ARRIVE,
                                    c)
                    c = nxt
                    continue
                cadm[c] = t
                pi[pid, PI_N] += 1
                node_inflight[node] += 1
                if pi[pid, PI_FREE] < 0:
                    pi[pid, PI_FREE] = par[node]
                cv[c, C_NEXT] = -1
                if pi[pid, PI_LEN] == 0:
                    pi[pid, PI_HEAD] = c
                else:
                    cv[pi[pid, PI_TAIL], C_NEXT] = c
                pi[pid, PI_TAIL] = c
                pi[pid, PI_LEN] += 1
                if pi[pid, PI_FREE] > 0:
                    nh, seq = _start_batch(pid, node, t, st, ht, hs, hc, nh, seq, cv, pi, pf,
                                           max_batch, m_kind, m_f, m_coff, m_ct, m_cm, nbuf,
                                           acc)
                c = nxt
            continue

        # a batch is done: its calls in order
        c = a
        pid = cv[a, C_PID]
        for _ in range(count):
            nxt = cv[c, C_NEXT]
            node = cv[c, C_NODE]
            pi[pid, PI_N] -= 1
            node_inflight[node] -= 1
            lat = t - cadm[c]
            lat_hist[node, _bucket(buckets, lat)] += 1.0
            acc[node, A_LAT_SUM] += lat
            r = cv[c, C_REQ]
            g = cv[c, C_STAGE]
            _free_call(st, cfree, c)
            c = nxt
            if dropped[r]:
                continue
            slot = req_slot[r]
            li = g - plan_off[s_meta[slot, P_PLAN]]
            if t > s_done[slot, li]:
                s_done[slot, li] = t
            s_calls[slot, li] -= 1
            if s_calls[slot, li] == 0:  # the stage is done
                tg = s_done[slot, li]
                top = 0
                if gst[g, G_SUCC_END] > gst[g, G_SUCC]:
                    # release its successors here: _complete's loop, written again on purpose
                    # (the common case; a call of _complete passes some 50 arrays of seven
                    # fields each, and numba inlines no call of over 30 arguments)
                    lo = plan_off[s_meta[slot, P_PLAN]]
                    for j in range(gst[g, G_SUCC], gst[g, G_SUCC_END]):
                        s2 = g_succ[j]
                        l2 = s2 - lo
                        if tg > s_ready[slot, l2]:
                            s_ready[slot, l2] = tg
                        s_preds[slot, l2] -= 1
                        if s_preds[slot, l2] == 0:
                            at = s_ready[slot, l2] + rpc_s
                            ok, nh, seq = _emit(r, slot, s2, at, st, ht, hs, hc, nh, seq, cv,
                                                cfree, gst, g_nodes, plan_off, n_chunks,
                                                dec_off, dec, kt, ko, kw, chk_off, chk_ptr,
                                                chk_e, chk_n, n_layers, s_calls, s_meta)
                            if not ok:
                                stack_g[top] = s2
                                stack_t[top] = at
                                top += 1
                else:  # a sink: the pass may end
                    stack_g[0] = g
                    stack_t[0] = tg
                    top = 1
                if top:
                    nh, seq = _complete(
                        r, t, top, False, st, ht, hs, hc, nh, seq, cv, cfree, gst, g_succ,
                        g_nodes, plan_off, src_off, src, sink_off, sink, times, prefill,
                        decodes, n_chunks, chunk, ttft, e2e, tpot, dropped, req_slot, dec_off,
                        dec, kt, ko, kw, chk_off, chk_ptr, chk_e, chk_n, n_layers, s_preds,
                        s_calls, s_ready, s_done, s_meta, sfree, stack_g, stack_t, lq_t, lq_v,
                        rpc_s)
        pi[pid, PI_FREE] += 1
        if pi[pid, PI_LEN] > 0:
            nh, seq = _start_batch(pid, pi[pid, PI_NODE], t, st, ht, hs, hc, nh, seq, cv, pi,
                                   pf, max_batch, m_kind, m_f, m_coff, m_ct, m_cm, nbuf, acc)
    st[HEAP] = nh
    st[SEQ] = seq
    return status


@njit(cache=True, inline="always")
def _start_batch(pid, node, t, st, ht, hs, hc, nh, seq, cv, pi, pf, max_batch, m_kind, m_f,
                 m_coff, m_ct, m_cm, nbuf, acc):
    """A free worker of ``pid`` takes the calls waiting (at most the node's ``max_batch``)."""
    limit = max_batch[node]
    n = pi[pid, PI_LEN]
    take = limit if (limit > 0 and n > limit) else n
    head = pi[pid, PI_HEAD]
    c = head
    tokens = 0
    last = c
    for _ in range(take):
        tokens += cv[c, C_TOKENS]
        last = c
        c = cv[c, C_NEXT]
    pi[pid, PI_HEAD] = c
    pi[pid, PI_LEN] = n - take
    if n == take:
        pi[pid, PI_TAIL] = -1
    cv[last, C_NEXT] = -1
    cv[head, C_COUNT] = take
    cv[head, C_PID] = pid
    pi[pid, PI_FREE] -= 1
    f = ffn_ms(m_kind, m_f, m_coff, m_ct, m_cm, node, tokens, pf[pid, PF_SHARE],
               pf[pid, PF_CORES]) * pf[pid, PF_INTERF]
    svc = (pf[pid, PF_K0] * take + pf[pid, PF_K1] * tokens + f) * nbuf[st[NI]] / 1000.0
    st[NI] += 1
    st[CALLS] += take
    st[BATCHES] += 1
    acc[node, A_CALLS] += take
    acc[node, A_TOKENS] += tokens
    acc[node, A_BUSY] += svc
    acc[node, A_BATCHES] += 1.0
    return _push(ht, hs, hc, nh, seq, t + svc, DONE, head)


@njit(cache=True, inline="always")
def _emit(r, slot, g, t, st, ht, hs, hc, nh, seq, cv, cfree, gst, g_nodes, plan_off, n_chunks,
          dec_off, dec, kt, ko, kw, chk_off, chk_ptr, chk_e, chk_n, n_layers, s_calls, s_meta):
    """Push the calls of stage ``g`` of ``r``'s pass at ``t`` as one group (one event: its
    calls keep their order, as consecutive events of one instant would); False when the
    stage has none."""
    which = s_meta[slot, P_PLAN]
    li = g - plan_off[which]
    base = gst[g, G_NOFF]
    if not gst[g, G_MOE]:
        s_calls[slot, li] = 1
        c = _new_call(st, cfree, cv, r, g, g_nodes[base], s_meta[slot, P_TOKENS])
        nh, seq = _push(ht, hs, hc, nh, seq, t, ARRIVE, c)
        return True, nh, seq
    layer = gst[g, G_LAYER]
    index = s_meta[slot, P_INDEX]
    head = -1
    prev = -1
    if which == 1:
        o = dec_off[r] + (index - n_chunks[r]) * kt + ko[layer]
        m = kw[layer]
        for j in range(m):
            c = _new_call(st, cfree, cv, r, g, g_nodes[base + dec[o + j]], 1)
            if prev < 0:
                head = c
            else:
                cv[prev, C_NEXT] = c
            prev = c
    else:
        q = chk_off[r] + index * n_layers + layer
        lo, hi = chk_ptr[q], chk_ptr[q + 1]
        m = hi - lo
        for j in range(lo, hi):
            c = _new_call(st, cfree, cv, r, g, g_nodes[base + chk_e[j]], chk_n[j])
            if prev < 0:
                head = c
            else:
                cv[prev, C_NEXT] = c
            prev = c
    s_calls[slot, li] = m
    if m == 0:
        return False, nh, seq
    cv[head, C_COUNT] = m
    nh, seq = _push(ht, hs, hc, nh, seq, t, ARRIVE, head)
    return True, nh, seq


@njit(cache=True)
def _complete(r, t0, top, begin, st, ht, hs, hc, nh, seq, cv, cfree, gst, g_succ, g_nodes,
              plan_off, src_off, src, sink_off, sink, times, prefill, decodes, n_chunks, chunk,
              ttft, e2e, tpot, dropped, req_slot, dec_off, dec, kt, ko, kw, chk_off, chk_ptr,
              chk_e, chk_n, n_layers, s_preds, s_calls, s_ready, s_done, s_meta, sfree,
              stack_g, stack_t, lq_t, lq_v, rpc_s):
    """Request ``r``'s pass bookkeeping: with ``begin``, start its first pass at ``t0``; then
    work off the stack of its stages that are done (``top`` entries): release their
    successors (a stage without calls is done at once), end the pass when its sinks are, and
    start the next pass (prefill chunks first, then decode passes) or finish the request."""
    slot = req_slot[r]
    index = 0
    if not begin:
        index = s_meta[slot, P_INDEX]
    start = begin
    t_start = t0
    while True:
        if start:  # pass ``index`` starts at ``t_start``: emit its sources
            start = False
            which = 0 if index < n_chunks[r] else 1
            if which == 0:
                tokens = prefill[r] if chunk <= 0 else min(chunk, prefill[r] - index * chunk)
            else:
                tokens = 1
            s_meta[slot, P_INDEX] = index
            s_meta[slot, P_PLAN] = which
            s_meta[slot, P_SINKS] = sink_off[which + 1] - sink_off[which]
            s_meta[slot, P_TOKENS] = tokens
            lo = plan_off[which]
            for li in range(plan_off[which + 1] - lo):
                s_preds[slot, li] = gst[lo + li, G_NPREDS]
                s_calls[slot, li] = 0
                s_ready[slot, li] = 0.0
                s_done[slot, li] = -np.inf
            for j in range(src_off[which], src_off[which + 1]):
                g = src[j]
                s_ready[slot, g - lo] = t_start
                ok, nh, seq = _emit(r, slot, g, t_start, st, ht, hs, hc, nh, seq, cv, cfree,
                                    gst, g_nodes, plan_off, n_chunks, dec_off, dec, kt, ko, kw,
                                    chk_off, chk_ptr, chk_e, chk_n, n_layers, s_calls, s_meta)
                if not ok:
                    stack_g[top] = g
                    stack_t[top] = t_start
                    top += 1
        if top == 0:
            return nh, seq
        top -= 1
        g, t = stack_g[top], stack_t[top]
        which = s_meta[slot, P_PLAN]
        lo = plan_off[which]
        s_done[slot, g - lo] = t
        if gst[g, G_SUCC_END] > gst[g, G_SUCC]:
            for j in range(gst[g, G_SUCC], gst[g, G_SUCC_END]):
                s2 = g_succ[j]
                l2 = s2 - lo
                if t > s_ready[slot, l2]:
                    s_ready[slot, l2] = t
                s_preds[slot, l2] -= 1
                if s_preds[slot, l2] == 0:
                    at = s_ready[slot, l2] + rpc_s
                    ok, nh, seq = _emit(r, slot, s2, at, st, ht, hs, hc, nh, seq, cv, cfree,
                                        gst, g_nodes, plan_off, n_chunks, dec_off, dec, kt, ko,
                                        kw, chk_off, chk_ptr, chk_e, chk_n, n_layers, s_calls,
                                        s_meta)
                    if not ok:
                        stack_g[top] = s2
                        stack_t[top] = at
                        top += 1
            continue
        s_meta[slot, P_SINKS] -= 1
        if s_meta[slot, P_SINKS] > 0:
            continue
        # the pass is done (every stage is: the stack is empty)
        end = -np.inf
        for j in range(sink_off[which], sink_off[which + 1]):
            v = s_done[slot, sink[j] - lo]
            if v > end:
                end = v
        if dropped[r]:
            return nh, seq
        index = s_meta[slot, P_INDEX]
        nc = n_chunks[r]
        if index == nc - 1:
            ttft[r] = end - times[r]
            _log_req(st, lq_t, lq_v, end, r, FIRST)
        if index + 1 < nc + decodes[r]:
            index += 1
            start = True
            t_start = end + rpc_s
            continue
        e2e[r] = end - times[r]
        d = decodes[r]
        tpot[r] = (e2e[r] - ttft[r]) / d if d > 0 else 0.0
        _log_req(st, lq_t, lq_v, end, r, END)
        _release(r, st, req_slot, sfree)
        return nh, seq
