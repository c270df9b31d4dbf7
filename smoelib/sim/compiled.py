"""The compiled request-level engine: :class:`~smoelib.sim.engine.Engine`'s model, served by
the numba kernel of :mod:`smoelib.sim.kernel`.

What it computes is the reference engine's, for the same seed, to the last request
(``tests/unit/test_compiled_engine.py``): the same events in the same order, the same random
streams read in the same order, the same arithmetic. Python prepares, per slice, what the
kernel cannot draw itself: each arriving request's routing (from its own generator, in the
order the reference draws it: the prefill chunks, then the decode passes), the pods that serve
each node, their handler coefficients, shares and MPS interference; then the kernel runs the
slice's events. Per-sequence invocation only: the step-batched router (a few calls per step)
stays with the reference engine (``simulator.engine`` picks the engine).

Memory: the event heap, the call pool, the pass slots (one per request in flight) and the
routes of the requests in flight grow by doubling; a finished request's routes are compacted
away.
"""

from __future__ import annotations

import numpy as np

from smoelib.core import work
from smoelib.core.service import handler_slowdown
from smoelib.sim import kernel as k
from smoelib.sim.cluster import Cluster
from smoelib.sim.engine import Engine
from smoelib.sim.telemetry import CALL_BOUNDS_S, Telemetry

__all__ = ["CompiledEngine", "model_columns"]

_KIND = {"shape": 0, "linear": 1, "curve": 2}
_BUF = 1 << 14


def _grow(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` with its first axis at least ``size`` long (doubling), the head kept."""
    n = a.shape[0]
    if size <= n:
        return a
    new = max(size, 2 * n, 16)
    out = np.zeros((new, *a.shape[1:]), dtype=a.dtype)
    out[:n] = a
    return out


def _free_stack(free: np.ndarray, st: np.ndarray, top: int, old: int, new: int) -> np.ndarray:
    """A pool grown from ``old`` to ``new`` entries: its free stack (as long as the pool),
    the new entries free."""
    out = np.zeros(new, np.int64)
    n = int(st[top])
    out[:n] = free[:n]
    out[n:n + new - old] = np.arange(old, new)
    st[top] = n + new - old
    return out


def model_columns(models) -> tuple:
    """The service model of each node as the kernel's columns: kind (-1: a join), the float
    columns, the measured curves (offsets, tokens, ms), and the handler's per-call and
    per-token ms."""
    n = len(models)
    m_kind = np.full(n, -1, np.int64)
    m_f = np.zeros((n, k.MODEL_COLUMNS))
    coff, ct, cm = [0], [], []
    handler, per_token = np.zeros(n), np.zeros(n)
    for i, m in enumerate(models):
        if m is not None:
            m_kind[i] = _KIND[m.kind]
            m_f[i] = (float(m.has_gpu), m.weight_bytes, m.cpu_weight_bytes, m.flops_per_token,
                      m.gpu_bw, m.gpu_peak, m.gpu_launch_ms, m.cpu_bw, m.cpu_peak, m.s_bw,
                      m.base_ms, m.per_token_ms)
            handler[i], per_token[i] = m.handler_ms, m.serialise_ms_per_token
            ct.extend(m.curve_tokens)
            cm.extend(m.curve_ms)
        coff.append(len(ct))
    return (m_kind, m_f, np.asarray(coff, np.int64), np.asarray(ct, float).reshape(-1),
            np.asarray(cm, float).reshape(-1), handler, per_token)


class CompiledEngine(Engine):
    """The reference engine's interface (``run``, the per-request arrays, the counters),
    served by the compiled kernel."""

    START = 1 << 12
    """first size of the heap, the call pool and the route arrays (each grows by doubling)"""
    SLOTS = 64
    """first number of pass slots (requests in flight)"""
    LOG = 1 << 16
    """request-log entries between flushes"""
    COMPACT_AT = 1 << 22
    """route entries held before the finished requests' routes are compacted away"""

    def __init__(self, dag, trace, *, models, router, params: dict, rng: np.random.Generator):
        if params.get("invocation", "per-sequence") != "per-sequence":
            raise ValueError("the compiled engine runs per-sequence invocation; step-batched "
                             "runs on the reference engine (simulator.engine: reference)")
        super().__init__(dag, trace, models=models, router=router, params=params, rng=rng)
        self._plans()
        self._models()
        n = self.times.size
        self.times = np.ascontiguousarray(self.times, dtype=float)
        self.prefill = np.asarray(self.prefill, np.int64)
        self.decodes = np.asarray(self.decodes, np.int64)
        self.n_chunks = work.n_chunks(dag, self.prefill).astype(np.int64)
        self.req_slot = np.full(n, -1, np.int64)
        # routes
        self.n_layers = len(router.sizes)
        self.kw = router.widths
        self.ko = np.concatenate([[0], np.cumsum(self.kw)[:-1]]).astype(np.int64)
        self.kt = int(self.kw.sum())
        self.dec_off = np.full(n, -1, np.int64)
        self.chk_off = np.full(n, -1, np.int64)
        self.dec = np.zeros(self.START, np.int32)
        self.chk_ptr = np.zeros(self.START, np.int64)
        self.chk_e = np.zeros(self.START, np.int32)
        self.chk_n = np.zeros(self.START, np.int32)
        self._dec_n = self._ptr_n = self._ent_n = 0
        # state
        self.st = np.zeros(k.SCALARS, np.int64)
        self.ht = np.zeros(self.START)
        self.hs = np.zeros(self.START, np.int64)
        self.hc = np.zeros(self.START, np.int64)
        self.call_v = np.zeros((self.START, k.CALL_COLUMNS), np.int64)
        self.cadm = np.zeros(self.START)
        self.cfree = np.arange(self.START, dtype=np.int64)[::-1].copy()
        self.st[k.CALL_FREE] = self.cfree.size
        width = max(self.width, 1)
        self.s_preds = np.zeros((self.SLOTS, width), np.int64)
        self.s_calls = np.zeros((self.SLOTS, width), np.int64)
        self.s_ready = np.zeros((self.SLOTS, width))
        self.s_done = np.zeros((self.SLOTS, width))
        self.s_meta = np.zeros((self.SLOTS, 4), np.int64)
        self.sfree = np.arange(self.SLOTS, dtype=np.int64)[::-1].copy()
        self.st[k.SLOT_FREE] = self.SLOTS
        self.ubuf = np.zeros(0)
        self.nbuf = np.zeros(0)
        self.pi = np.zeros((0, k.POD_INTS), np.int64)
        self._logs = self._new_logs(self.LOG)
        self._par = np.asarray(self.par, np.int64)
        self._max_batch = np.asarray(self.max_batch, np.int64)

    # ---- static arrays -------------------------------------------------------------------
    def _plans(self) -> None:
        """Both plans (first pass, next passes) as flat arrays over global stage ids."""
        moe, layer, noff, ncnt, npreds, soff, succ, nodes = [], [], [], [], [], [0], [], []
        plan_off, src_off, src, sink_off, sink = [0], [0], [], [0], []
        for plan in (self.plan_first, self.plan_next):
            base = plan_off[-1]
            for i in range(len(plan.stages)):
                moe.append(int(plan.moe[i]))
                layer.append(plan.layer_of[i])
                noff.append(len(nodes))
                ncnt.append(len(plan.nodes[i]))
                nodes.extend(plan.nodes[i])
                npreds.append(len(plan.preds[i]))
                succ.extend(base + j for j in plan.succs[i])
                soff.append(len(succ))
            plan_off.append(base + len(plan.stages))
            src.extend(base + i for i in plan.sources)
            src_off.append(len(src))
            sink.extend(base + i for i in plan.sinks)
            sink_off.append(len(sink))
        a = lambda x: np.asarray(x, np.int64)  # noqa: E731
        gst = np.zeros((len(moe), k.STAGE_COLUMNS), np.int64)
        gst[:, k.G_MOE], gst[:, k.G_LAYER], gst[:, k.G_NOFF] = moe, layer, noff
        gst[:, k.G_NPREDS], gst[:, k.G_SUCC], gst[:, k.G_SUCC_END] = npreds, soff[:-1], soff[1:]
        self.plan_arrays = (gst, a(succ), a(nodes), a(plan_off), a(src_off), a(src),
                            a(sink_off), a(sink))
        # the most calls one stage's end can emit: its successors', or the next pass's sources
        ncnt_a, succ_a = a(ncnt), a(succ)
        succ_emit = max((int(ncnt_a[succ_a[soff[g]:soff[g + 1]]].sum())
                         for g in range(len(moe))), default=0)
        src_emit = max(int(ncnt_a[src[src_off[p]:src_off[p + 1]]].sum()) for p in (0, 1))
        self.emit_max = succ_emit + src_emit + 1
        self.width = max(plan_off[1], plan_off[2] - plan_off[1])  # stages of the larger plan

    def _models(self) -> None:
        cols = model_columns(self.models)
        self.model_arrays = cols[:5]
        self.handler, self.per_token = cols[5], cols[6]

    # ---- per slice -----------------------------------------------------------------------
    def _route(self, lo: int, hi: int) -> None:
        """The routing of requests ``lo..hi-1``, drawn as the reference engine draws it."""
        router, L = self.router, self.n_layers  # noqa: N806
        for r in range(lo, hi):
            rng = self._rng(r)
            t, task = float(self.times[r]), int(self.task[r])
            self.chk_off[r] = self._ptr_n
            self.chk_ptr = _grow(self.chk_ptr, self._ptr_n + int(self.n_chunks[r]) * L + 1)
            for tokens in work.chunks(self.dag, int(self.prefill[r])):
                for counts in router.chunk(rng, tokens, t, task):
                    hit = np.flatnonzero(counts)
                    self.chk_ptr[self._ptr_n] = self._ent_n
                    self._ptr_n += 1
                    end = self._ent_n + hit.size
                    self.chk_e = _grow(self.chk_e, end)
                    self.chk_n = _grow(self.chk_n, end)
                    self.chk_e[self._ent_n:end] = hit
                    self.chk_n[self._ent_n:end] = counts[hit]
                    self._ent_n = end
            self.chk_ptr[self._ptr_n] = self._ent_n  # (the next request's first entry)
            d = int(self.decodes[r])
            if d > 0:
                picks = np.concatenate(router.decode(rng, d, t, task), axis=1).reshape(-1)
                end = self._dec_n + picks.size
                self.dec = _grow(self.dec, end)
                self.dec[self._dec_n:end] = picks
                self.dec_off[r] = self._dec_n
                self._dec_n = end
            self._rngs.pop(r, None)

    def _compact(self) -> None:
        """Drop the routes of requests no longer in flight (finished or dropped)."""
        done = ~np.isnan(self.e2e[:self.next_req]) | self.dropped[:self.next_req]
        live = np.flatnonzero(~done & (self.chk_off[:self.next_req] >= 0))
        dec, ptr, ent_e, ent_n = [], [], [], []
        dn = pn = en = 0
        L = self.n_layers
        for r in live.tolist():
            if self.dec_off[r] >= 0:
                m = int(self.decodes[r]) * self.kt
                dec.append(self.dec[self.dec_off[r]:self.dec_off[r] + m])
                self.dec_off[r] = dn
                dn += m
            p0 = int(self.chk_off[r])
            m = int(self.n_chunks[r]) * L + 1
            seg = self.chk_ptr[p0:p0 + m]
            e0, e1 = int(seg[0]), int(seg[-1])
            ptr.append(seg - e0 + en)
            ent_e.append(self.chk_e[e0:e1])
            ent_n.append(self.chk_n[e0:e1])
            self.chk_off[r] = pn
            pn += m
            en += e1 - e0
        gone = np.flatnonzero(done)
        self.dec_off[gone] = -1
        self.chk_off[gone] = -1
        cat = lambda parts, a: (np.concatenate(parts).astype(a.dtype) if parts  # noqa: E731
                                else np.zeros(0, a.dtype))
        self.dec = _grow(cat(dec, self.dec), self.START)
        self.chk_ptr = _grow(cat(ptr, self.chk_ptr), self.START)
        self.chk_e = _grow(cat(ent_e, self.chk_e), self.START)
        self.chk_n = _grow(cat(ent_n, self.chk_n), self.START)
        self._dec_n, self._ptr_n, self._ent_n = dn, pn, en

    def _pods(self, t0: float, cluster: Cluster) -> np.ndarray:
        """The pods' columns for the slice (the integer ones persist: calls in flight, free
        workers, FIFO)."""
        c, n = cluster.cols, cluster.n
        cap = c["node"].size
        if self.pi.shape[0] < cap:
            grown = np.zeros((cap, k.POD_INTS), np.int64)
            grown[:, k.PI_FREE] = -1
            grown[:self.pi.shape[0]] = self.pi
            self.pi = grown
        node = c["node"]
        self.pi[:, k.PI_NODE] = node
        self.pi[:, k.PI_CONC] = c["conc"]
        par = self._par[node]
        slow = handler_slowdown(c["cpu"], par)
        pf = np.empty((cap, k.POD_FLOATS))
        pf[:, k.PF_READY], pf[:, k.PF_END] = c["ready"], c["end"]
        pf[:, k.PF_K0] = self.handler[node] * slow
        pf[:, k.PF_K1] = self.per_token[node] * slow
        pf[:, k.PF_SHARE] = c["share"]
        pf[:, k.PF_CORES] = c["cpu"] / np.maximum(par, 1)  # each worker's cores
        pf[:, k.PF_INTERF] = 1.0
        pf[:n, k.PF_INTERF] = cluster.interference(t0)
        return pf

    @staticmethod
    def _candidates(t0: float, cluster: Cluster) -> tuple:
        """Per node, the pods that may serve in the slice, in the reference's order."""
        end = cluster.cols["end"]
        off, ids = [0], []
        for ended, live in zip(cluster.ended, cluster.live, strict=True):
            ids.extend(p for p in ended if end[p] > t0)
            ids.extend(live)
            off.append(len(ids))
        return np.asarray(off, np.int64), np.asarray(ids, np.int64)

    @staticmethod
    def _new_logs(size: int) -> tuple:
        """The request log: time, and (request, kind: first token, end, drop)."""
        return np.zeros(size), np.zeros((size, 2), np.int64)

    def _flush(self, tel: Telemetry) -> None:
        st = self.st
        lq_t, lq_v = self._logs
        nq = st[k.LOG_REQ]
        kinds = lq_v[:nq, 1]
        first = kinds == k.FIRST
        ends = np.concatenate([np.flatnonzero(kinds == k.END), np.flatnonzero(kinds == k.DROP)])
        self._record_requests(tel, first=(lq_t[:nq][first], lq_v[:nq, 0][first]),
                              ends=(lq_t[:nq][ends], lq_v[:nq, 0][ends]))
        st[k.LOG_REQ] = 0

    # ---- the slice -----------------------------------------------------------------------
    def run(self, t0: float, t1: float, cluster: Cluster, tel: Telemetry) -> None:
        """Serve every event before ``t1`` (arrivals of the trace included)."""
        lo, hi = self._arrivals(t1, tel)
        if self._dec_n > self.COMPACT_AT or self._ent_n > self.COMPACT_AT:
            self._compact()
        self._route(lo, hi)
        st = self.st
        if hi > lo:
            self.ht = _grow(self.ht, st[k.HEAP] + hi - lo + 1)
            self.hs = _grow(self.hs, self.ht.size)
            self.hc = _grow(self.hc, self.ht.size)
            k.push_requests(st, self.ht, self.hs, self.hc, self.times, lo, hi)
        pf = self._pods(t0, cluster)
        cand = self._candidates(t0, cluster)
        n_nodes = self.node_inflight.size
        acc = np.zeros((n_nodes, k.COUNTERS))
        lat_hist = np.zeros((n_nodes, CALL_BOUNDS_S.size))
        while True:
            status = k.serve(
                float(t1), st, self.ht, self.hs, self.hc, self.call_v, self.cadm, self.cfree,
                *self.plan_arrays, self.times, self.prefill, self.decodes, self.n_chunks,
                int(self.dag.prefill_chunk), self.ttft, self.e2e, self.tpot, self.dropped,
                self.req_slot, self.dec_off, self.dec, self.kt, self.ko, self.kw, self.chk_off,
                self.chk_ptr, self.chk_e, self.chk_n, self.n_layers, self.s_preds,
                self.s_calls, self.s_ready, self.s_done, self.s_meta, self.sfree, self.pi, pf,
                *cand, *self.model_arrays, self.ubuf, self.nbuf, *self._logs, acc, lat_hist,
                CALL_BOUNDS_S, self.node_inflight, self._max_batch, self._par, float(self.rpc_s),
                float(self.retry_s), float(self.retry_cap_s), int(self.max_retries),
                int(self.emit_max))
            if status == k.OK:
                break
            self._make_room(status, tel)
        self._flush(tel)
        tel.add_tick(int(t0 // tel.dt), {
            "calls": acc[:, k.A_CALLS], "tokens": acc[:, k.A_TOKENS],
            "busy_s": acc[:, k.A_BUSY], "batches": acc[:, k.A_BATCHES],
            "rejected": acc[:, k.A_REJECTED], "lat_sum": acc[:, k.A_LAT_SUM],
            "lat_hist": lat_hist})
        self.calls, self.rejected = int(st[k.CALLS]), int(st[k.REJECTED])
        self.retries, self.batches = int(st[k.RETRIES]), int(st[k.BATCHES])

    def _make_room(self, status: int, tel: Telemetry) -> None:
        st = self.st
        if status == k.NEED_RANDOM:
            self.ubuf = np.concatenate([self.ubuf[st[k.UI]:], self._unif_rng.random(_BUF)])
            self.nbuf = np.concatenate([self.nbuf[st[k.NI]:], self._noise_block()])
            st[k.UI] = st[k.NI] = 0
        elif status == k.NEED_HEAP:
            size = 2 * self.ht.size + self.emit_max * 64
            self.ht, self.hs, self.hc = (_grow(self.ht, size), _grow(self.hs, size),
                                         _grow(self.hc, size))
        elif status == k.NEED_CALLS:
            old = self.call_v.shape[0]
            self.call_v = _grow(self.call_v, 2 * old + self.emit_max * 64)
            self.cadm = _grow(self.cadm, self.call_v.shape[0])
            self.cfree = _free_stack(self.cfree, st, k.CALL_FREE, old, self.call_v.shape[0])
        elif status == k.NEED_SLOTS:
            old = self.s_meta.shape[0]
            for name in ("s_preds", "s_calls", "s_ready", "s_done", "s_meta"):
                setattr(self, name, _grow(getattr(self, name), 2 * old))
            self.sfree = _free_stack(self.sfree, st, k.SLOT_FREE, old, 2 * old)
        elif status == k.NEED_LOG:
            empty = not st[k.LOG_REQ]
            self._flush(tel)
            if empty:  # one event needs more than the log holds
                self._logs = self._new_logs(2 * self._logs[0].size)
        else:
            raise RuntimeError(f"the compiled engine returned status {status}")
