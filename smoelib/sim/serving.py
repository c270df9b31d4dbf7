"""Request-level serving: every call of every request, as OpenFaaS dispatches it.

The pipeline is a DAG of stages and every request visits each stage once, so the network of
queues is feed-forward. Each slice ``[t0, t1)`` is served stage by stage in topological order:
a stage's calls that arrive before ``t1`` are all known once its predecessors are served.
A call goes to a ready replica chosen uniformly at random (kube-proxy); a replica runs
``parallelism`` calls at once, FIFO, and holds at most ``concurrency`` (``max_inflight``) calls
in flight; a call beyond that, or with no ready replica, is answered 429/503 at once and retried
after a jittered exponential backoff, up to ``max_retries`` (then the request is dropped).
Service time (ms) = ``base_ms + tokens * per_token_ms * slowdown(pod)``, times a unit-mean gamma
noise of CV ``service_cv``. A stage is done for a request when the slowest of its calls is
(scatter-gather); the next stage starts ``rpc_overhead_ms`` later.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from smoelib.sim.cluster import Cluster
from smoelib.sim.telemetry import Telemetry

__all__ = ["StagePlan", "RequestServer"]


class StagePlan:
    """Stages of a DAG in topological order, with node indices and stage edges."""

    def __init__(self, dag):
        index = {n: i for i, n in enumerate(dag.nodes)}
        order: list[str] = []
        for node in dag.nodes:
            st = dag.graph.nodes[node]["stage"]
            if st not in order:
                order.append(st)
        self.stages = order
        self.moe = [st in dag.moe_layers for st in order]
        self.nodes = [[index[n] for n in dag.moe_layers[st]] if st in dag.moe_layers
                      else [index[st]] for st in order]
        pos = {st: i for i, st in enumerate(order)}
        self.preds = [[pos[p] for p in dag.after[st]] for st in order]
        self.succs = [[j for j in range(len(order)) if i in self.preds[j]]
                      for i in range(len(order))]
        self.sinks = [i for i in range(len(order)) if not self.succs[i]]
        self.layer_of = {}
        for li, st in enumerate(dag.moe_layers):
            self.layer_of[pos[st]] = li


class RequestServer:
    """Serves one trace on one cluster. Arrays over requests are indexed like the trace."""

    def __init__(self, plan: StagePlan, *, times_s: np.ndarray, tokens: np.ndarray,
                 router, params: dict, rng: np.random.Generator):
        self.p = plan
        self.times = times_s
        self.tok = np.maximum(np.minimum(tokens, params["max_tokens"]), 1).astype(np.int64)
        self.router = router
        self.rng = rng
        self.base_ms, self.per_tok = params["base_ms"], params["per_token_ms"]
        self.par = params["parallelism"]
        self.rpc_s = params["rpc_overhead_ms"] / 1000.0
        self.cv = params["service_cv"]
        self.retry_s = params["retry_backoff_ms"] / 1000
        self.retry_cap_s = params["retry_cap_ms"] / 1000
        self.max_retries = params["max_retries"]
        n, s = times_s.size, len(plan.stages)
        self.ready = np.zeros((s, n))
        self.preds_left = np.array([[len(p)] * n for p in plan.preds], dtype=np.int32)
        self.calls_left = np.zeros((s, n), dtype=np.int32)
        self.done = np.zeros((s, n))
        self.sinks_left = np.full(n, len(plan.sinks), dtype=np.int32)
        self.e2e = np.full(n, np.nan)
        self.dropped = np.zeros(n, dtype=bool)
        self.counts: dict[int, np.ndarray] = {}
        self.pending: list[list[tuple]] = [[] for _ in plan.stages]
        self.inflight: dict[int, list[float]] = {}
        self.free: dict[int, list[float]] = {}
        self.next_req = 0
        self.finished: list[tuple[np.ndarray, np.ndarray]] = []
        self.retries = 0
        self.rejected = 0

    # ---- arrivals and call generation ----------------------------------------------------
    def _arrive(self, t1: float, tel: Telemetry) -> None:
        lo = self.next_req
        hi = int(np.searchsorted(self.times, t1, side="left"))
        if hi <= lo:
            return
        self.next_req = hi
        counts = self.router.counts(lo, hi, self.times, self.tok)
        for si, li in self.p.layer_of.items():
            self.counts.setdefault(si, np.zeros((self.times.size, len(self.p.nodes[si])),
                                                np.int32))[lo:hi] = counts[li]
        for k in np.unique((self.times[lo:hi] // tel.dt).astype(np.int64)):
            m = (self.times[lo:hi] // tel.dt).astype(np.int64) == k
            tel.add_requests(float(k) * tel.dt, int(m.sum()))
        reqs = np.arange(lo, hi)
        for si in range(len(self.p.stages)):
            if not self.p.preds[si]:
                self.ready[si, reqs] = self.times[reqs]
                self._emit(si, reqs, self.times[reqs])

    def _emit(self, si: int, reqs: np.ndarray, at: np.ndarray) -> None:
        nodes = self.p.nodes[si]
        if self.p.moe[si]:
            cnt = self.counts[si][reqs]
            ri, ei = np.nonzero(cnt)
            self.calls_left[si, reqs] = (cnt > 0).sum(1)
            calls = (at[ri], reqs[ri], np.asarray(nodes)[ei], cnt[ri, ei].astype(np.int64),
                     np.zeros(ri.size, np.int64))
        else:
            self.calls_left[si, reqs] = 1
            calls = (at, reqs, np.full(reqs.size, nodes[0]), self.tok[reqs],
                     np.zeros(reqs.size, np.int64))
        self.pending[si].append(calls)

    # ---- one slice -----------------------------------------------------------------------
    def run(self, t0: float, t1: float, cluster: Cluster, tel: Telemetry) -> None:
        """Serve every call that arrives in ``[t0, t1)``."""
        self._arrive(t1, tel)
        slow = cluster.slowdown(t0).tolist()
        conc = cluster.cols["conc"][:cluster.n].tolist()
        self._log: list[tuple] = []
        for si in range(len(self.p.stages)):
            if self.pending[si]:
                self._serve_stage(si, t0, t1, cluster, slow, conc)
        if self._log:
            node, tok, a_node, done, lat, svc, rej = (
                np.concatenate([x[i] for x in self._log]) for i in range(7))
            tel.add_counts(t0, "tokens", node, tok)
            tel.add_counts(t0, "calls", a_node, np.ones(a_node.size))
            tel.add_counts(t0, "busy_s", a_node, svc)
            tel.add_latencies(done, a_node, lat)
            if rej.size:
                tel.add_counts(t0, "rejected", rej, np.ones(rej.size))
        if self.finished:
            done, lat = (np.concatenate([f[i] for f in self.finished]) for i in range(2))
            tel.add_e2e(done, lat)
            self.finished = []

    def _take(self, si: int, t1: float) -> tuple[np.ndarray, ...] | None:
        parts = self.pending[si]
        if len(parts) == 1:
            at, req, node, tok, att = parts[0]
        else:
            at, req, node, tok, att = (np.concatenate([p[i] for p in parts]) for i in range(5))
        now = at < t1
        if now.all():
            self.pending[si] = []
        else:
            later = ~now
            self.pending[si] = [(at[later], req[later], node[later], tok[later], att[later])]
            if not now.any():
                return None
            at, req, node, tok, att = at[now], req[now], node[now], tok[now], att[now]
        order = np.argsort(at, kind="stable")
        return at[order], req[order], node[order], tok[order], att[order]

    def _serve_stage(self, si, t0, t1, cluster, slow, conc) -> None:
        got = self._take(si, t1)
        if got is None:
            return
        at, req, node, tok, att = got
        n = at.size
        noise = (self.rng.gamma(1 / self.cv**2, self.cv**2, n) if self.cv > 0 else 1.0)
        fixed = (self.base_ms[node] * noise / 1000.0).tolist()
        var = (tok * self.per_tok[node] * noise / 1000.0).tolist()
        pick = self.rng.random(n).tolist()
        serving = {nd: cluster.serving(nd, t0, t1) for nd in self.p.nodes[si]}
        adm, arr_l, done_l, svc_l, rej, carry, drops, retry = [], [], [], [], [], [], [], []
        at_l, node_l, att_l = at.tolist(), node.tolist(), att.tolist()
        inflight, free, par, max_retries = self.inflight, self.free, self.par, self.max_retries
        rnd, seq, i = self.rng.random, 0, 0
        heappop, heappush, heapreplace = heapq.heappop, heapq.heappush, heapq.heapreplace
        while True:
            if retry and (i >= n or retry[0][0] < at_l[i]):
                a, _, j, attempt, u = heappop(retry)
                if a >= t1:
                    carry.append((a, j, attempt))
                    continue
            elif i < n:
                a, j, attempt, u = at_l[i], i, att_l[i], pick[i]
                i += 1
            else:
                break
            nd = node_l[j]
            pieces = serving[nd]
            pods = pieces[0][1]
            if len(pieces) > 1:
                for start, group in pieces:
                    if start <= a:
                        pods = group
            if pods:
                pid = pods[int(u * len(pods))]
                q = inflight.get(pid)
                if q is None:
                    q = inflight[pid] = []
                    free[pid] = [0.0] * int(par[nd])
                while q and q[0] <= a:
                    heappop(q)
                if len(q) < conc[pid]:
                    svc = fixed[j] + var[j] * slow[pid]
                    fq = free[pid]
                    d = (a if fq[0] < a else fq[0]) + svc
                    heapreplace(fq, d)
                    heappush(q, d)
                    adm.append(j)
                    arr_l.append(a)
                    done_l.append(d)
                    svc_l.append(svc)
                    continue
            rej.append(nd)
            if attempt >= max_retries:
                drops.append(j)
                continue
            delay = min(self.retry_s * 2.0**attempt, self.retry_cap_s) * (0.5 + 0.5 * rnd())
            seq += 1
            heappush(retry, (a + delay, seq, j, attempt + 1, rnd()))
        self.rejected += len(rej)
        self.retries += len(rej) - len(drops)
        if carry:
            ca = np.array([c[0] for c in carry])
            cj = np.array([c[1] for c in carry], np.int64)
            self.pending[si].append((ca, req[cj], node[cj], tok[cj],
                                     np.array([c[2] for c in carry], np.int64)))
        if drops:
            self.dropped[req[np.array(drops)]] = True
        adm_a = np.array(adm, np.int64)
        done = np.array(done_l)
        # the latency a replica sees: from the admitted attempt's arrival to completion
        self._log.append((node, tok.astype(float), node[adm_a], done, done - np.array(arr_l),
                          np.array(svc_l), np.array(rej, np.int64)))
        if adm_a.size:
            self._propagate(si, req[adm_a], done)

    def _propagate(self, si: int, reqs: np.ndarray, done_t: np.ndarray) -> None:
        np.maximum.at(self.done[si], reqs, done_t)
        np.subtract.at(self.calls_left[si], reqs, 1)
        fin = reqs[(self.calls_left[si, reqs] == 0)]
        if self.p.moe[si]:
            fin = np.unique(fin)
        fin = fin[~self.dropped[fin]]
        if not fin.size:
            return
        done = self.done[si, fin]
        for s2 in self.p.succs[si]:
            self.ready[s2, fin] = np.maximum(self.ready[s2, fin], done)
            self.preds_left[s2, fin] -= 1
            go = fin[self.preds_left[s2, fin] == 0]
            if go.size:
                self._emit(s2, go, self.ready[s2, go] + self.rpc_s)
        if si in self.p.sinks:
            prev = np.where(np.isnan(self.e2e[fin]), -math.inf, self.e2e[fin])
            self.e2e[fin] = np.maximum(prev, done)
            self.sinks_left[fin] -= 1
            out = fin[self.sinks_left[fin] == 0]
            if out.size:
                self.e2e[out] = self.e2e[out] - self.times[out]
                self.finished.append((self.times[out] + self.e2e[out], self.e2e[out]))

    def inflight_at(self, t: float, n_nodes: int, cluster: Cluster) -> np.ndarray:
        """Calls in flight per node at ``t`` (running plus waiting)."""
        out = np.zeros(n_nodes)
        node = cluster.cols["node"]
        for pid, q in self.inflight.items():
            if q:
                out[node[pid]] += sum(1 for d in q if d > t)
        return out
