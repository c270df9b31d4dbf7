"""The request-level engine: every pass of every request, every call, every batch.

A discrete-event simulation over one heap of events (call arrivals and batch completions), in
time order, paused at each slice end ``t1`` and resumed on the next slice with the cluster's
pods as they are then.

**Passes** (:mod:`smoelib.core.work`): a request makes its prefill (or encoder) pass, in
chunks where the pipeline chunks its prefill, then its decode passes, one after another; each
pass visits the stages of its part of the DAG (every stage, or an encoder-decoder's encoder or
decoder stages) in topological order. A stage's calls leave when all its predecessors are done
(``rpc_overhead_ms`` after the slowest), and a stage is done when its slowest call is
(scatter-gather); the next pass starts ``rpc_overhead_ms`` after the last stage. At an MoE
stage a decode pass makes one call per selected expert (``top_k``, 1 token each), a prefill
chunk one call per touched expert carrying its tokens; a segment takes one call with all the
pass's tokens.

**Invocation** (``simulator.invocation``): ``per-sequence`` runs each request's passes on
their own (a serverless router). ``step-batched`` runs a router that advances every running
sequence in lock-step (continuous batching, Orca/vLLM): a step carries one token of each
decoding sequence plus prefill chunks of new ones, up to ``max_running`` sequences and
``max_step_tokens`` tokens; its calls carry the step's tokens routed to each touched expert;
new requests join at the next step.

**A replica** (a ready pod) holds at most ``concurrency`` calls (OpenFaaS ``max_inflight``:
running plus waiting); a call beyond that, or with no ready replica, is answered 429/503 at
once. Each of its ``parallelism`` workers, when free, takes every call waiting (FIFO; at most
the node's ``max_batch`` when it sets one) and runs them as one batch, whose time is
:meth:`~smoelib.core.service.ServiceModel.batch_ms` at the pod's CPU, GPU share and MPS
interference, times a unit-mean gamma noise of CV ``service_cv``. Calls go to a ready replica
chosen uniformly at random (kube-proxy).

**429s under decode**: a refused call is retried after a jittered exponential backoff
(``retry_backoff_ms`` doubling to ``retry_cap_ms``, x U[0.5, 1]), up to ``max_retries``
times; a call that exhausts them drops its request (every request it carries, step-batched):
a dropped request has infinite TTFT and TPOT, misses its SLO and counts in every percentile.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import numpy as np

from smoelib.core import work
from smoelib.sim.cluster import Cluster
from smoelib.sim.telemetry import Telemetry

__all__ = ["StagePlan", "Engine"]

_ARRIVE, _DONE, _REQUEST = 0, 1, 2
_BUF = 1 << 14


class StagePlan:
    """The stages one kind of pass visits, in topological order, with node indices and stage
    edges inside the plan (``stages``: the stage ids to keep; None keeps all)."""

    def __init__(self, dag, stages: set[str] | None = None):
        index = {n: i for i, n in enumerate(dag.nodes)}
        order: list[str] = []
        for node in dag.nodes:
            st = dag.graph.nodes[node]["stage"]
            if st not in order and (stages is None or st in stages):
                order.append(st)
        self.stages = order
        self.moe = [st in dag.moe_layers for st in order]
        self.nodes = [[index[n] for n in dag.moe_layers[st]] if st in dag.moe_layers
                      else [index[st]] for st in order]
        pos = {st: i for i, st in enumerate(order)}
        self.preds = [[pos[p] for p in dag.after[st] if p in pos] for st in order]
        self.succs = [[j for j in range(len(order)) if i in self.preds[j]]
                      for i in range(len(order))]
        self.sources = [i for i in range(len(order)) if not self.preds[i]]
        self.sinks = [i for i in range(len(order)) if not self.succs[i]]
        layers = list(dag.moe_layers)
        self.layer_of = [layers.index(st) if st in dag.moe_layers else -1 for st in order]


class _Pass:
    """One pass in flight: the request (or step) it belongs to, the stage bookkeeping, and
    what each MoE layer routes."""

    __slots__ = ("owner", "plan", "tokens", "route", "preds_left", "calls_left", "ready",
                 "done", "decode", "index", "sinks_left")

    def __init__(self, owner, plan: StagePlan, tokens: int, route, decode: bool, index: int):
        self.owner = owner
        self.plan = plan
        self.tokens = tokens
        self.route = route  # per layer: decode -> expert indices; chunk -> counts per expert
        self.preds_left = [len(p) for p in plan.preds]
        self.calls_left = [0] * len(plan.stages)
        self.ready = [0.0] * len(plan.stages)
        self.done = [-math.inf] * len(plan.stages)
        self.decode = decode
        self.index = index
        self.sinks_left = len(plan.sinks)


class _Step:
    """Step-batched mode: the sequences one step advances."""

    __slots__ = ("members", "prefill")

    def __init__(self, members: list[int], prefill: dict[int, int]):
        self.members = members
        self.prefill = prefill  # request -> tokens of its chunk in this step


class Engine:
    """Serves one trace on one cluster; per-request arrays are indexed like the trace.

    Args:
        dag: the pipeline.
        trace: the arrivals (times, context and generated tokens, task classes).
        models: per node its :class:`~smoelib.core.service.ServiceModel` (None for a join).
        router: the :class:`~smoelib.sim.routing.RoutingModel`.
        params: ``rpc_overhead_ms``, ``service_cv``, ``retry_backoff_ms``, ``retry_cap_ms``,
            ``max_retries``, ``parallelism`` (per node), ``invocation``, ``max_running``,
            ``max_step_tokens``.
        rng: the dispatch generator (replica choice, service noise, backoff jitter).
    """

    def __init__(self, dag, trace, *, models, router, params: dict, rng: np.random.Generator):
        self.dag = dag
        self.times = trace.times_s
        n = self.times.size
        gen = trace.generated if trace.generated is not None else np.zeros(n, np.int64)
        self.task = trace.task if trace.task is not None else np.zeros(n, np.int8)
        self.prefill = work.prefill_tokens(dag, trace.tokens, gen)
        self.decodes = work.decode_passes(dag, trace.tokens, gen)
        self.router = router
        # two streams of the dispatch generator, each read in order: service noise, and the
        # uniforms of replica choice and backoff jitter
        self._noise_rng, self._unif_rng = rng.spawn(2)
        self.models = models
        self.par = params["parallelism"]
        self.max_batch = [dag.spec(n).max_batch for n in dag.nodes]
        self.rpc_s = params["rpc_overhead_ms"] / 1000.0
        self.cv = params["service_cv"]
        self.retry_s = params["retry_backoff_ms"] / 1000.0
        self.retry_cap_s = params["retry_cap_ms"] / 1000.0
        self.max_retries = params["max_retries"]
        self.step_batched = params.get("invocation", "per-sequence") == "step-batched"
        if self.step_batched and dag.kind == "encoder-decoder":
            raise ValueError(f"pipeline {dag.name}: step-batched invocation runs encoder and "
                             "decoder pipelines; an encoder-decoder runs per-sequence")
        self.max_running = params.get("max_running", 256)
        self.max_step_tokens = params.get("max_step_tokens", 2048)
        if dag.kind == "encoder-decoder":
            parts = dag.stage_parts
            self.plan_first = StagePlan(dag, {s for s, p in parts.items() if p == "encoder"})
            self.plan_next = StagePlan(dag, {s for s, p in parts.items() if p == "decoder"})
        else:
            self.plan_first = self.plan_next = StagePlan(dag)
        self.slo = dag.slo
        # per request
        self.ttft = np.full(n, np.nan)
        self.e2e = np.full(n, np.nan)
        self.tpot = np.full(n, np.nan)
        self.dropped = np.zeros(n, dtype=bool)
        self._chunks: dict[int, list[int]] = {}
        self._decode_route: dict[int, list[np.ndarray]] = {}
        self._rngs: dict[int, np.random.Generator] = {}
        # events and replicas
        self._heap: list[tuple] = []
        self._seq = 0
        self._pods_n: dict[int, int] = {}
        self._pods_q: dict[int, deque] = {}
        self._pods_free: dict[int, int] = {}
        self.node_inflight = np.zeros(len(dag.nodes), dtype=np.int64)
        self.next_req = 0
        self.calls = 0
        self.rejected = 0
        self.retries = 0
        self.batches = 0
        self._noise: list[float] = []
        self._unif: list[float] = []
        self._ni = self._ui = 0
        # step-batched router state
        self._waiting: deque[int] = deque()
        self._running: list[int] = []
        self._step_busy = False
        self._progress: dict[int, int] = {}

    # ---- random buffers ------------------------------------------------------------------
    def _noise_draw(self) -> float:
        """The next unit-mean gamma service noise (drawn in blocks)."""
        if self._ni >= len(self._noise):
            self._noise = self._noise_block().tolist()
            self._ni = 0
        self._ni += 1
        return self._noise[self._ni - 1]

    def _noise_block(self) -> np.ndarray:
        return (self._noise_rng.gamma(1 / self.cv**2, self.cv**2, _BUF) if self.cv > 0
                else np.ones(_BUF))

    def _u(self) -> float:
        """The next uniform draw (replica choice, backoff jitter; drawn in blocks)."""
        if self._ui >= len(self._unif):
            self._unif = self._unif_rng.random(_BUF).tolist()
            self._ui = 0
        self._ui += 1
        return self._unif[self._ui - 1]

    def _push(self, t: float, kind: int, a, b=None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    # ---- requests and passes -------------------------------------------------------------
    def _arrive(self, r: int, t: float) -> None:
        if self.step_batched:
            self._waiting.append(r)
            if not self._step_busy:
                self._start_step(t)
            return
        self._start_request_pass(r, t, 0)

    def _rng(self, r: int) -> np.random.Generator:
        g = self._rngs.get(r)
        if g is None:
            g = self._rngs[r] = self.router.rng_for(r)
        return g

    def _route_chunk(self, r: int, tokens: int):
        return self.router.chunk(self._rng(r), tokens, float(self.times[r]), int(self.task[r]))

    def _start_request_pass(self, r: int, t: float, index: int) -> None:
        """Per-sequence: pass ``index`` of request ``r`` (chunks first, then decode)."""
        chunks = self._chunks.get(r)
        if chunks is None:
            chunks = self._chunks[r] = work.chunks(self.dag, int(self.prefill[r]))
        if index < len(chunks):
            p = _Pass(r, self.plan_first, chunks[index], self._route_chunk(r, chunks[index]),
                      False, index)
        else:
            d = index - len(chunks)
            if d == 0:
                self._decode_route[r] = self.router.decode(
                    self._rng(r), int(self.decodes[r]), float(self.times[r]), int(self.task[r]))
            p = _Pass(r, self.plan_next, 1, (self._decode_route[r], d), True, index)
        self._emit_sources(p, t)

    def _emit_sources(self, p: _Pass, t: float) -> None:
        for si in p.plan.sources:
            p.ready[si] = t
            self._emit(p, si, t)

    def _emit(self, p: _Pass, si: int, t: float) -> None:
        plan = p.plan
        nodes = plan.nodes[si]
        if plan.moe[si]:
            layer = plan.layer_of[si]
            if p.decode:
                route, d = p.route
                picks = route[layer][d].tolist()
                p.calls_left[si] = len(picks)
                for e in picks:
                    self._push(t, _ARRIVE, [p, si, nodes[e], 1, 0], None)
            else:
                counts = p.route[layer]
                hit = np.flatnonzero(counts).tolist()
                p.calls_left[si] = len(hit)
                for e in hit:
                    self._push(t, _ARRIVE, [p, si, nodes[e], int(counts[e]), 0], None)
                if not hit:
                    self._stage_done(p, si, t)
        else:
            p.calls_left[si] = 1
            self._push(t, _ARRIVE, [p, si, nodes[0], p.tokens, 0], None)

    def _stage_done(self, p: _Pass, si: int, t: float) -> None:
        plan = p.plan
        p.done[si] = t
        for s2 in plan.succs[si]:
            if t > p.ready[s2]:
                p.ready[s2] = t
            p.preds_left[s2] -= 1
            if p.preds_left[s2] == 0:
                self._emit(p, s2, p.ready[s2] + self.rpc_s)
        if plan.succs[si]:
            return
        p.sinks_left -= 1
        if p.sinks_left:
            return
        end = max(p.done[k] for k in plan.sinks)
        if isinstance(p.owner, _Step):
            self._step_done(p, end)
        else:
            self._pass_done(p.owner, p.index, end)

    def _pass_done(self, r: int, index: int, t: float) -> None:
        if self.dropped[r]:
            return
        n_chunks = len(self._chunks[r])
        if index == n_chunks - 1:
            self.ttft[r] = t - self.times[r]
            self._log_first(t, r)
        if index + 1 < n_chunks + int(self.decodes[r]):
            self._start_request_pass(r, t + self.rpc_s, index + 1)
        else:
            self._finish(r, t)

    def _finish(self, r: int, t: float) -> None:
        self.e2e[r] = t - self.times[r]
        d = int(self.decodes[r])
        self.tpot[r] = (self.e2e[r] - self.ttft[r]) / d if d > 0 else 0.0
        self._log_end(t, r)
        self._chunks.pop(r, None)
        self._decode_route.pop(r, None)
        self._rngs.pop(r, None)

    def _drop(self, r: int, t: float) -> None:
        if self.dropped[r]:
            return
        self.dropped[r] = True
        self._log_drop(t, r)
        self._chunks.pop(r, None)
        self._decode_route.pop(r, None)
        self._rngs.pop(r, None)

    # ---- step-batched router -------------------------------------------------------------
    def _start_step(self, t: float) -> None:
        running = [r for r in self._running if not self.dropped[r]]
        budget = self.max_step_tokens - sum(1 for r in running
                                            if self._progress.get(r, 0) >= self.prefill[r])
        while self._waiting and len(running) < self.max_running:
            r = self._waiting.popleft()
            if not self.dropped[r]:
                running.append(r)
                self._progress[r] = 0
        self._running = running
        if not running:
            self._step_busy = False
            return
        prefill: dict[int, int] = {}
        decoding: list[int] = []
        for r in running:
            done = self._progress[r]
            if done < self.prefill[r]:
                if budget <= 0:
                    continue
                take = int(min(self.prefill[r] - done, budget))
                if self.dag.prefill_chunk > 0:
                    take = min(take, self.dag.prefill_chunk)
                prefill[r] = take
                budget -= take
            else:
                decoding.append(r)
        step = _Step(list(prefill) + decoding, prefill)
        if not step.members:
            self._step_busy = False
            return
        self._step_busy = True
        tokens = sum(prefill.values()) + len(decoding)
        layers = [np.zeros(e, np.int64) for e in self.router.sizes]
        for r, n in prefill.items():
            for li, c in enumerate(self._route_chunk(r, n)):
                layers[li] += c
        for r in decoding:
            d = self._progress[r] - int(self.prefill[r])
            if r not in self._decode_route:
                self._decode_route[r] = self.router.decode(
                    self._rng(r), max(int(self.decodes[r]), 1), float(self.times[r]),
                    int(self.task[r]))
            for li, picks in enumerate(self._decode_route[r]):
                layers[li][picks[d]] += 1
        plan = self.plan_first  # lock-step batching runs decoder-only and encoder pipelines
        self._emit_sources(_Pass(step, plan, tokens, layers, False, 0), t)

    def _step_done(self, p: _Pass, t: float) -> None:
        step: _Step = p.owner
        for r in step.members:
            if self.dropped[r]:
                continue
            if r in step.prefill:
                self._progress[r] += step.prefill[r]
                if self._progress[r] >= self.prefill[r]:
                    self.ttft[r] = t - self.times[r]
                    self._log_first(t, r)
                    if self.decodes[r] == 0:
                        self._finish(r, t)
            else:
                self._progress[r] += 1
                if self._progress[r] - self.prefill[r] >= self.decodes[r]:
                    self._finish(r, t)
        self._running = [r for r in self._running
                         if not self.dropped[r] and np.isnan(self.e2e[r])]
        self._start_step(t + self.rpc_s)

    # ---- the event loop ------------------------------------------------------------------
    def run(self, t0: float, t1: float, cluster: Cluster, tel: Telemetry) -> None:
        """Serve every event before ``t1`` (arrivals of the trace included)."""
        self._log_reset()
        lo, hi = self._arrivals(t1, tel)
        for r in range(lo, hi):
            self._push(float(self.times[r]), _REQUEST, r)
        c = cluster.cols
        interference = cluster.interference(t0)
        cpu, share, conc = c["cpu"], c["share"], c["conc"]
        pieces: dict[int, list] = {}
        coef: dict[int, tuple] = {}
        ffn: dict[tuple[int, int], float] = {}
        heap, heappop = self._heap, heapq.heappop
        pods_n, pods_q, pods_free = self._pods_n, self._pods_q, self._pods_free
        log = self._log
        while heap and heap[0][0] < t1:
            t, _, kind, a, b = heappop(heap)
            if kind == _REQUEST:
                self._arrive(a, t)
                continue
            if kind == _ARRIVE:
                call = a
                p, si, node, tokens, attempt = call
                owner = p.owner
                if not isinstance(owner, _Step) and self.dropped[owner]:
                    continue
                got = pieces.get(node)
                if got is None:
                    got = pieces[node] = cluster.serving(node, t0, t1)
                pods = got[0][1]
                if len(got) > 1:
                    for start, group in got:
                        if start <= t:
                            pods = group
                pid = -1
                if pods:
                    pid = pods[int(self._u() * len(pods))]
                    if pods_n.get(pid, 0) >= conc[pid]:
                        pid = -1
                if pid < 0:
                    self.rejected += 1
                    log["rej"].append(node)
                    log["rej_t"].append(t)
                    if attempt >= self.max_retries:
                        self._drop_owner(owner, t)
                        continue
                    self.retries += 1
                    delay = min(self.retry_s * 2.0 ** attempt, self.retry_cap_s)
                    call[4] = attempt + 1
                    self._push(t + delay * (0.5 + 0.5 * self._u()), _ARRIVE, call)
                    continue
                call.append(t)  # admitted at
                pods_n[pid] = pods_n.get(pid, 0) + 1
                self.node_inflight[node] += 1
                q = pods_q.get(pid)
                if q is None:
                    q = pods_q[pid] = deque()
                    pods_free[pid] = int(self.par[node])
                q.append(call)
                if pods_free[pid] > 0:
                    self._start_batch(pid, node, t, cpu, share, interference, coef, ffn)
                continue
            # a batch is done
            pid, batch = a, b
            done_nodes = log["done_node"]
            for call in batch:
                p, si, node, tokens, attempt, admitted = call
                pods_n[pid] -= 1
                self.node_inflight[node] -= 1
                done_nodes.append(node)
                log["done_t"].append(t)
                log["lat"].append(t - admitted)
                owner = p.owner
                if not isinstance(owner, _Step) and self.dropped[owner]:
                    continue
                if t > p.done[si]:
                    p.done[si] = t
                p.calls_left[si] -= 1
                if p.calls_left[si] == 0:
                    self._stage_done(p, si, p.done[si])
            pods_free[pid] += 1
            if pods_q[pid]:
                self._start_batch(pid, int(c["node"][pid]), t, cpu, share, interference, coef,
                                  ffn)
        self._log_flush(t0, tel)

    def _arrivals(self, t1: float, tel: Telemetry) -> tuple[int, int]:
        """The requests arriving before ``t1`` not yet enqueued (counted in the telemetry)."""
        lo = self.next_req
        hi = max(lo, int(np.searchsorted(self.times, t1, side="left")))
        if hi > lo:
            for k, c in zip(*np.unique((self.times[lo:hi] // tel.dt).astype(np.int64),
                                       return_counts=True), strict=True):
                tel.add_requests(float(k) * tel.dt, int(c))
        self.next_req = hi
        return lo, hi

    def _drop_owner(self, owner, t: float) -> None:
        if isinstance(owner, _Step):
            for r in owner.members:
                self._drop(r, t)
        else:
            self._drop(owner, t)

    def _start_batch(self, pid, node, t, cpu, share, interference, coef, ffn) -> None:
        q = self._pods_q[pid]
        limit = self.max_batch[node]
        if limit and len(q) > limit:
            batch = [q.popleft() for _ in range(limit)]
        else:
            batch = list(q)
            q.clear()
        self._pods_free[pid] -= 1
        tokens = 0
        for call in batch:
            tokens += call[3]
        k = coef.get(pid)
        if k is None:
            model = self.models[node]
            per_call, per_token = model.cpu_coefficients(cpu=float(cpu[pid]),
                                                         parallelism=int(self.par[node]))
            k = coef[pid] = (float(per_call), float(per_token))
        key = (pid, tokens)
        f = ffn.get(key)
        if f is None:
            model = self.models[node]
            cores = float(cpu[pid]) / max(int(self.par[node]), 1)
            f = ffn[key] = float(model.ffn_ms(tokens, share=float(share[pid]), cores=cores)
                                 ) * float(interference[pid])
        svc = (k[0] * len(batch) + k[1] * tokens + f) * self._noise_draw() / 1000.0
        self.calls += len(batch)
        self.batches += 1
        log = self._log
        log["b_node"].append(node)
        log["b_t"].append(t)
        log["b_svc"].append(svc)
        log["b_calls"].append(len(batch))
        log["b_tokens"].append(tokens)
        self._push(t + svc, _DONE, pid, batch)

    # ---- telemetry -----------------------------------------------------------------------
    def _log_reset(self) -> None:
        self._log = {k: [] for k in ("rej", "rej_t", "done_node", "done_t", "lat", "b_node",
                                     "b_t", "b_svc", "b_calls", "b_tokens", "first", "end",
                                     "drop")}

    def _log_first(self, t: float, r: int) -> None:
        self._log["first"].append((t, r))

    def _log_end(self, t: float, r: int) -> None:
        self._log["end"].append((t, r))

    def _log_drop(self, t: float, r: int) -> None:
        self._log["drop"].append((t, r))

    def _log_flush(self, t0: float, tel: Telemetry) -> None:
        g = self._log
        first = np.asarray(g["first"], float).reshape(-1, 2)
        ends = np.asarray(g["end"] + g["drop"], float).reshape(-1, 2)
        if g["b_node"]:
            bt, node = np.asarray(g["b_t"]), np.asarray(g["b_node"], np.int64)
            tel.add_binned(bt, "calls", node, np.asarray(g["b_calls"], float))
            tel.add_binned(bt, "tokens", node, np.asarray(g["b_tokens"], float))
            tel.add_binned(bt, "busy_s", node, np.asarray(g["b_svc"]))
            tel.add_binned(bt, "batches", node, np.ones(node.size))
        if g["rej"]:
            tel.add_binned(np.asarray(g["rej_t"]), "rejected", np.asarray(g["rej"], np.int64),
                           np.ones(len(g["rej"])))
        if g["done_node"]:
            tel.add_latencies(np.asarray(g["done_t"]), np.asarray(g["done_node"], np.int64),
                              np.asarray(g["lat"]))
        self._record_requests(tel, first=(first[:, 0], first[:, 1].astype(np.int64)),
                              ends=(ends[:, 0], ends[:, 1].astype(np.int64)))
        self._log_reset()

    def _record_requests(self, tel: Telemetry, *, first, ends) -> None:
        """Add first tokens and request ends (each: times, requests) to the telemetry: the
        TTFT histogram; TPOT, end-to-end, SLO met and drops (a drop has infinite latency)."""
        if first[0].size:
            tel.add_pass_latency(first[0], "ttft_hist", self.ttft[first[1]])
        if ends[0].size:
            t, r = ends
            dropped = self.dropped[r]
            tpot = np.where(dropped, np.inf, self.tpot[r])
            e2e = np.where(dropped, np.inf, self.e2e[r])
            tel.add_request_ends(t, ttft=self.ttft[r], tpot=tpot, e2e=e2e,
                                 met=self.meets_slo(r))

    def meets_slo(self, r: np.ndarray) -> np.ndarray:
        """Whether requests ``r`` met the SLO: finished, TTFT and TPOT within theirs
        (DistServe's goodput)."""
        ok = ~self.dropped[r] & np.isfinite(self.e2e[r])
        ok &= self.ttft[r] * 1000.0 <= self.slo.ttft_ms
        if self.slo.tpot_ms is not None:
            ok &= self.tpot[r] * 1000.0 <= self.slo.tpot_ms
        return ok

    def inflight_at(self, t: float, n_nodes: int, cluster: Cluster) -> np.ndarray:
        """Calls in flight per node now (running plus waiting)."""
        return self.node_inflight.astype(float)
