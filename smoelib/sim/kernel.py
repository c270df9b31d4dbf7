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

__all__ = ["serve", "push_requests", "ffn_ms", "OK", "NEED_RANDOM", "NEED_HEAP", "NEED_CALLS",
           "NEED_SLOTS", "NEED_LOG", "SCALARS"]

ARRIVE, DONE, REQUEST = 0, 1, 2
OK, NEED_RANDOM, NEED_HEAP, NEED_CALLS, NEED_SLOTS, NEED_LOG = 0, 1, 2, 3, 4, 5

# the scalar state (one int64 array), by index
(HEAP, SEQ, CALLS, REJECTED, RETRIES, BATCHES, CALL_FREE, SLOT_FREE, UI, NI, LOG_DONE, LOG_B,
 LOG_REJ, LOG_REQ) = range(14)
SCALARS = 14

# the model columns (one float row per node)
(M_GPU, M_WB, M_CWB, M_FPT, M_GBW, M_GPEAK, M_LAUNCH, M_CBW, M_CPEAK, M_SBW, M_BASE,
 M_PER_TOKEN) = range(12)
MODEL_COLUMNS = 12

# call columns
C_REQ, C_STAGE, C_NODE, C_TOKENS, C_ATTEMPT, C_NEXT = range(6)
# pass-slot meta columns
P_INDEX, P_PLAN, P_SINKS, P_TOKENS = range(4)
# request-log kinds
FIRST, END, DROP = 0, 1, 2


@njit(cache=True)
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


# ---- the event heap ----------------------------------------------------------------------
@njit(cache=True)
def _push(st, ht, hv, t, kind, a, b, count):
    n = st[HEAP]
    if n >= ht.size:
        raise IndexError("event heap overflow")
    seq = st[SEQ] + 1
    st[SEQ] = seq
    i = n
    while i > 0:
        p = (i - 1) >> 1
        if ht[p] < t or (ht[p] == t and hv[p, 0] < seq):
            break
        ht[i] = ht[p]
        hv[i, 0], hv[i, 1], hv[i, 2], hv[i, 3], hv[i, 4] = (hv[p, 0], hv[p, 1], hv[p, 2],
                                                            hv[p, 3], hv[p, 4])
        i = p
    ht[i] = t
    hv[i, 0], hv[i, 1], hv[i, 2], hv[i, 3], hv[i, 4] = seq, kind, a, b, count
    st[HEAP] = n + 1


@njit(cache=True)
def _pop(st, ht, hv):
    """Remove the heap's top (the caller has read it)."""
    n = st[HEAP] - 1
    st[HEAP] = n
    if n == 0:
        return
    t, s = ht[n], hv[n, 0]
    v1, v2, v3, v4 = hv[n, 1], hv[n, 2], hv[n, 3], hv[n, 4]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and (ht[c + 1] < ht[c] or (ht[c + 1] == ht[c] and hv[c + 1, 0] < hv[c, 0])):
            c += 1
        if ht[c] < t or (ht[c] == t and hv[c, 0] < s):
            ht[i] = ht[c]
            hv[i, 0], hv[i, 1], hv[i, 2], hv[i, 3], hv[i, 4] = (hv[c, 0], hv[c, 1], hv[c, 2],
                                                                hv[c, 3], hv[c, 4])
            i = c
        else:
            break
    ht[i] = t
    hv[i, 0], hv[i, 1], hv[i, 2], hv[i, 3], hv[i, 4] = s, v1, v2, v3, v4


@njit(cache=True)
def push_requests(st, ht, hv, times, lo, hi):
    """The arrivals of requests ``lo..hi-1`` (in order)."""
    for r in range(lo, hi):
        _push(st, ht, hv, times[r], REQUEST, r, 0, 0)


# ---- calls -------------------------------------------------------------------------------
@njit(cache=True)
def _new_call(st, cfree, cv, r, g, node, tokens):
    k = st[CALL_FREE] - 1
    if k < 0:
        raise IndexError("call pool overflow")
    st[CALL_FREE] = k
    c = cfree[k]
    cv[c, C_REQ], cv[c, C_STAGE], cv[c, C_NODE] = r, g, node
    cv[c, C_TOKENS], cv[c, C_ATTEMPT], cv[c, C_NEXT] = tokens, 0, -1
    return c


@njit(cache=True)
def _free_call(st, cfree, c):
    cfree[st[CALL_FREE]] = c
    st[CALL_FREE] += 1


# ---- the request log ---------------------------------------------------------------------
@njit(cache=True)
def _log_req(st, lq_t, lq_v, t, r, kind):
    i = st[LOG_REQ]
    lq_t[i] = t
    lq_v[i, 0], lq_v[i, 1] = r, kind
    st[LOG_REQ] = i + 1


@njit(cache=True)
def serve(t1, st, ht, hv, cv, cadm, cfree, plan, req, route, slots, pods, cand, model, bufs,
          logs, node_inflight, max_batch, par, rpc_s, retry_s, retry_cap_s, max_retries,
          emit_max):
    """Serve events before ``t1``; returns a status code (OK when done)."""
    dropped, req_slot = req[8], req[9]
    p_n, p_free, q_head, q_tail, q_len = pods[0], pods[1], pods[2], pods[3], pods[4]
    p_node, p_ready, p_end, p_conc = pods[5], pods[6], pods[7], pods[8]
    cand_off, cand_ids = cand
    ubuf, nbuf = bufs
    ld_t, ld_l, ld_n, lb_t, lb_s, lb_v, lr_t, lr_n, lq_t, lq_v = logs
    cap_done, cap_b, cap_rej, cap_req = ld_t.size, lb_t.size, lr_t.size, lq_t.size
    plan_off = plan[8]
    s_calls, s_done, s_meta, sfree = slots[1], slots[3], slots[4], slots[5]
    stack_g = np.empty(s_calls.shape[1] + 1, np.int64)
    stack_t = np.empty(s_calls.shape[1] + 1)

    while st[HEAP] > 0 and ht[0] < t1:
        t = ht[0]
        kind = hv[0, 1]
        a, b, count = hv[0, 2], hv[0, 3], hv[0, 4]
        # room for the worst this event can do, checked before it starts
        if st[UI] + 2 > ubuf.size or st[NI] + 1 > nbuf.size:
            return NEED_RANDOM
        width = (count if kind == DONE else 1) * emit_max + 1
        if st[HEAP] + width + 1 > ht.size:
            return NEED_HEAP
        if st[CALL_FREE] < width:
            return NEED_CALLS
        if kind == REQUEST and st[SLOT_FREE] < 1:
            return NEED_SLOTS
        if (st[LOG_DONE] + count > cap_done or st[LOG_B] + 1 > cap_b
                or st[LOG_REJ] + 1 > cap_rej or st[LOG_REQ] + 2 * count + 2 > cap_req):
            return NEED_LOG
        _pop(st, ht, hv)

        if kind == REQUEST:
            r = a
            k = st[SLOT_FREE] - 1
            st[SLOT_FREE] = k
            req_slot[r] = sfree[k]
            top = _begin_pass(r, t, 0, 0, st, ht, hv, cv, cfree, plan, req, route, slots,
                              stack_g, stack_t)
            if top:
                _complete(r, top, st, ht, hv, cv, cfree, plan, req, route, slots, stack_g,
                          stack_t, lq_t, lq_v, rpc_s)
            continue

        if kind == ARRIVE:
            c = a
            r = cv[c, C_REQ]
            if dropped[r]:
                _free_call(st, cfree, c)
                continue
            node = cv[c, C_NODE]
            # the ready replicas of the node now, in the pod table's order: pick one uniformly
            lo, hi = cand_off[node], cand_off[node + 1]
            m = 0
            for j in range(lo, hi):
                p = cand_ids[j]
                if p_ready[p] <= t < p_end[p]:
                    m += 1
            pid = -1
            if m > 0:
                pick = int(ubuf[st[UI]] * m)
                st[UI] += 1
                for j in range(lo, hi):
                    p = cand_ids[j]
                    if p_ready[p] <= t < p_end[p]:
                        if pick == 0:
                            pid = p
                            break
                        pick -= 1
                if p_n[pid] >= p_conc[pid]:
                    pid = -1
            if pid < 0:
                st[REJECTED] += 1
                i = st[LOG_REJ]
                lr_t[i] = t
                lr_n[i] = node
                st[LOG_REJ] = i + 1
                attempt = cv[c, C_ATTEMPT]
                if attempt >= max_retries:
                    _drop(r, t, st, req, slots, lq_t, lq_v)
                    _free_call(st, cfree, c)
                    continue
                st[RETRIES] += 1
                delay = min(retry_s * 2.0 ** attempt, retry_cap_s)
                cv[c, C_ATTEMPT] = attempt + 1
                u = ubuf[st[UI]]
                st[UI] += 1
                _push(st, ht, hv, t + delay * (0.5 + 0.5 * u), ARRIVE, c, 0, 1)
                continue
            cadm[c] = t
            p_n[pid] += 1
            node_inflight[node] += 1
            if p_free[pid] < 0:
                p_free[pid] = par[node]
            cv[c, C_NEXT] = -1
            if q_len[pid] == 0:
                q_head[pid] = c
            else:
                cv[q_tail[pid], C_NEXT] = c
            q_tail[pid] = c
            q_len[pid] += 1
            if p_free[pid] > 0:
                _start_batch(pid, node, t, st, ht, hv, cv, pods, max_batch, model, nbuf, logs)
            continue

        # a batch is done: its calls in order
        pid = a
        c = b
        for _ in range(count):
            nxt = cv[c, C_NEXT]
            node = cv[c, C_NODE]
            p_n[pid] -= 1
            node_inflight[node] -= 1
            i = st[LOG_DONE]
            ld_t[i] = t
            ld_l[i] = t - cadm[c]
            ld_n[i] = node
            st[LOG_DONE] = i + 1
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
            if s_calls[slot, li] == 0:
                stack_g[0], stack_t[0] = g, s_done[slot, li]
                _complete(r, 1, st, ht, hv, cv, cfree, plan, req, route, slots, stack_g,
                          stack_t, lq_t, lq_v, rpc_s)
        p_free[pid] += 1
        if q_len[pid] > 0:
            _start_batch(pid, p_node[pid], t, st, ht, hv, cv, pods, max_batch, model, nbuf,
                         logs)
    return OK


@njit(cache=True)
def _start_batch(pid, node, t, st, ht, hv, cv, pods, max_batch, model, nbuf, logs):
    """A free worker of ``pid`` takes the calls waiting (at most the node's ``max_batch``)."""
    q_head, q_tail, q_len, p_free = pods[2], pods[3], pods[4], pods[1]
    p_k0, p_k1, p_share, p_cores, p_interf = pods[9], pods[10], pods[11], pods[12], pods[13]
    lb_t, lb_s, lb_v = logs[3], logs[4], logs[5]
    limit = max_batch[node]
    n = q_len[pid]
    take = limit if (limit > 0 and n > limit) else n
    head = q_head[pid]
    c = head
    tokens = 0
    last = c
    for _ in range(take):
        tokens += cv[c, C_TOKENS]
        last = c
        c = cv[c, C_NEXT]
    q_head[pid] = c
    q_len[pid] = n - take
    if n == take:
        q_tail[pid] = -1
    cv[last, C_NEXT] = -1
    p_free[pid] -= 1
    m_kind, m_f, m_coff, m_ct, m_cm = model
    f = ffn_ms(m_kind, m_f, m_coff, m_ct, m_cm, node, tokens, p_share[pid],
               p_cores[pid]) * p_interf[pid]
    svc = (p_k0[pid] * take + p_k1[pid] * tokens + f) * nbuf[st[NI]] / 1000.0
    st[NI] += 1
    st[CALLS] += take
    st[BATCHES] += 1
    i = st[LOG_B]
    lb_t[i] = t
    lb_s[i] = svc
    lb_v[i, 0], lb_v[i, 1], lb_v[i, 2] = node, take, tokens
    st[LOG_B] = i + 1
    _push(st, ht, hv, t + svc, DONE, pid, head, take)


@njit(cache=True)
def _drop(r, t, st, req, slots, lq_t, lq_v):
    dropped, req_slot = req[8], req[9]
    if dropped[r]:
        return
    dropped[r] = True
    _log_req(st, lq_t, lq_v, t, r, DROP)
    _release(r, st, req_slot, slots[5])


@njit(cache=True)
def _release(r, st, req_slot, sfree):
    slot = req_slot[r]
    if slot >= 0:
        sfree[st[SLOT_FREE]] = slot
        st[SLOT_FREE] += 1
        req_slot[r] = -1


@njit(cache=True)
def _begin_pass(r, t, index, top, st, ht, hv, cv, cfree, plan, req, route, slots, stack_g,
                stack_t):
    """Start pass ``index`` of request ``r`` (prefill chunks first, then decode passes): emit
    its source stages; a source without calls goes on the stack (returns its new top)."""
    g_npreds, plan_off, src_off, src, sink_off = plan[4], plan[8], plan[9], plan[10], plan[11]
    prefill, n_chunks, chunk, req_slot = req[1], req[3], req[4], req[9]
    s_preds, s_calls, s_ready, s_done, s_meta = slots[0], slots[1], slots[2], slots[3], slots[4]
    slot = req_slot[r]
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
        s_preds[slot, li] = g_npreds[lo + li]
        s_calls[slot, li] = 0
        s_ready[slot, li] = 0.0
        s_done[slot, li] = -np.inf
    for j in range(src_off[which], src_off[which + 1]):
        g = src[j]
        s_ready[slot, g - lo] = t
        if not _emit(r, slot, g, t, st, ht, hv, cv, cfree, plan, req, route, slots):
            stack_g[top], stack_t[top] = g, t
            top += 1
    return top


@njit(cache=True)
def _emit(r, slot, g, t, st, ht, hv, cv, cfree, plan, req, route, slots):
    """Push the calls of stage ``g`` of ``r``'s pass at ``t``; False when it has none."""
    g_moe, g_layer, g_noff, g_nodes, plan_off = plan[0], plan[1], plan[2], plan[7], plan[8]
    dec_off, dec, kt, ko, kw, chk_off, chk_ptr, chk_e, chk_n, n_layers = route
    s_calls, s_meta = slots[1], slots[4]
    which = s_meta[slot, P_PLAN]
    li = g - plan_off[which]
    base = g_noff[g]
    if g_moe[g]:
        layer = g_layer[g]
        index = s_meta[slot, P_INDEX]
        if which == 1:
            o = dec_off[r] + (index - req[3][r]) * kt + ko[layer]
            s_calls[slot, li] = kw[layer]
            for j in range(kw[layer]):
                c = _new_call(st, cfree, cv, r, g, g_nodes[base + dec[o + j]], 1)
                _push(st, ht, hv, t, ARRIVE, c, 0, 1)
            return True
        q = chk_off[r] + index * n_layers + layer
        lo, hi = chk_ptr[q], chk_ptr[q + 1]
        s_calls[slot, li] = hi - lo
        for j in range(lo, hi):
            c = _new_call(st, cfree, cv, r, g, g_nodes[base + chk_e[j]], chk_n[j])
            _push(st, ht, hv, t, ARRIVE, c, 0, 1)
        return hi > lo
    s_calls[slot, li] = 1
    c = _new_call(st, cfree, cv, r, g, g_nodes[base], s_meta[slot, P_TOKENS])
    _push(st, ht, hv, t, ARRIVE, c, 0, 1)
    return True


@njit(cache=True)
def _complete(r, top, st, ht, hv, cv, cfree, plan, req, route, slots, stack_g, stack_t, lq_t,
              lq_v, rpc_s):
    """Work off the stack of ``r``'s stages that are done: release their successors (a stage
    without calls is done at once), end the pass when its sinks are, and start the next."""
    g_soff, g_succ, plan_off, sink_off, sink = plan[5], plan[6], plan[8], plan[11], plan[12]
    times, decodes, n_chunks = req[0], req[2], req[3]
    ttft, e2e, tpot, dropped, req_slot = req[5], req[6], req[7], req[8], req[9]
    s_preds, s_ready, s_done, s_meta = slots[0], slots[2], slots[3], slots[4]
    slot = req_slot[r]
    while top > 0:
        top -= 1
        g, t = stack_g[top], stack_t[top]
        which = s_meta[slot, P_PLAN]
        lo = plan_off[which]
        s_done[slot, g - lo] = t
        if g_soff[g + 1] > g_soff[g]:
            for j in range(g_soff[g], g_soff[g + 1]):
                s2 = g_succ[j]
                l2 = s2 - lo
                if t > s_ready[slot, l2]:
                    s_ready[slot, l2] = t
                s_preds[slot, l2] -= 1
                if s_preds[slot, l2] == 0:
                    at = s_ready[slot, l2] + rpc_s
                    if not _emit(r, slot, s2, at, st, ht, hv, cv, cfree, plan, req, route,
                                 slots):
                        stack_g[top], stack_t[top] = s2, at
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
            return
        index = s_meta[slot, P_INDEX]
        nc = n_chunks[r]
        if index == nc - 1:
            ttft[r] = end - times[r]
            _log_req(st, lq_t, lq_v, end, r, FIRST)
        if index + 1 < nc + decodes[r]:
            top = _begin_pass(r, end + rpc_s, index + 1, top, st, ht, hv, cv, cfree, plan, req,
                              route, slots, stack_g, stack_t)
            continue
        e2e[r] = end - times[r]
        d = decodes[r]
        tpot[r] = (e2e[r] - ttft[r]) / d if d > 0 else 0.0
        _log_req(st, lq_t, lq_v, end, r, END)
        _release(r, st, req_slot, slots[5])
        return
