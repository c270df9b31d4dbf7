"""``smoe evaluate``: every (pipeline, trace, policy, seed) on the same arrivals and routing.

Common random numbers: a run's arrivals and routing depend only on its trace and seed (the
simulator's streams, docs/simulator.md), so every policy of a scenario sees the same requests.
Every run drives the one tick (:mod:`smoelib.core.tick`) and the simulated actuator (the vertical
planner over the simulator, :mod:`smoelib.sim.actuator`), as the controller would: sMoE's own
policies, ``queueing`` and ``oracle`` under the ``production`` guard profile (step limits,
scale-down hold under SLO pressure, the busy-expert floor, slow-knob hysteresis and the rollout
budget), the external systems under ``physical`` (bounds and GPU capacity: what any cluster
imposes), unless the run names a profile; each row records the profile. Hooks a decider may have
(docs/baselines.md): ``simulator_overrides`` (settings its model needs), ``see_future`` (the
true offered load, for ``oracle``, ``static-peak``, ``static-best``, ``static-mean`` and
``floor``), ``episode_cost`` (``floor``).
Results: ``results.json`` (DESIGN.md "Results of smoe evaluate") and the markdown table with
the acceptance checks (:func:`table_markdown`); the CLI draws the plots.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoelib.core import work
from smoelib.core.shield import lifts
from smoelib.errors import PermanentError
from smoelib.policy.base import default_guards, get_decider
from smoelib.policy.baselines.common import Experts, Hindsight, with_overrides
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.loop import LoopStep, SimLoop
from smoelib.sim.pipelines import RANDOM, load_pipeline
from smoelib.sim.summary import summarise, window_series

__all__ = ["RunSpec", "run_one", "run_all", "hindsight", "segment_cost", "start_episode",
           "episode_cost", "RUN_KEYS",
           "write_json", "table_markdown", "checks", "paired_ratio"]

RUN_KEYS = ("pipeline", "trace", "policy", "guards", "seed", "duration_s", "requests", "dropped",
            "cost", "warm_cost", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "tpot_p50_ms",
            "tpot_p95_ms", "tpot_p99_ms", "ttft_slo_ms", "tpot_slo_ms", "attainment_target",
            "slo_attainment", "worst_window_attainment", "goodput",
            "slo_ratio", "window_violation_rate", "decide_ms_p50", "rejected", "rollouts",
            "pods_replaced", "cold_starts", "calls", "intervention_rate")


@dataclass(frozen=True)
class RunSpec:
    """One run: ``pipeline`` (a pipeline.yml path), ``trace`` (built-in name or CSV path),
    ``policy`` (registry name), ``seed``, ``duration_s`` (simulated seconds), ``config``
    (config.yaml path or None for the packaged defaults), ``overrides`` (dotted settings paths
    and values applied over it, as ``smoe tune`` tries them), ``guards`` (the guard profile;
    None: the one the policy runs under by default)."""

    pipeline: str
    trace: str
    policy: str
    seed: int
    duration_s: float
    config: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    guards: str | None = None


def hindsight(env: SimEnv, ex: Experts) -> Hindsight:
    """The episode's offered load per tick and expert, from the env's own trace and routing.

    Each request's routing is drawn exactly as the engine will draw it (its own child of the
    routing seed: prefill chunks, then decode passes), from fresh generators, so reading it
    ahead changes nothing the env later serves (tests/unit/test_evaluate.py checks it). When
    the passes happen depends on the service, so they are placed at the no-load pace of the
    pipeline (:func:`pass_times_s`): the prefill at arrival, decode pass ``j`` at arrival plus
    the prefill time plus ``j`` decode-pass times."""
    dt, eng = env.dt, env.server
    times = env.trace.times_s
    ticks = int(math.ceil(env.duration_s / dt - 1e-9))
    calls = np.zeros((ticks, len(ex)))
    tokens = np.zeros((ticks, len(ex)))
    first_s, next_s = pass_times_s(env)
    router = eng.router
    for r in range(times.size):
        rng = router.rng_for(r)
        t0 = float(times[r])
        k0 = min(int(t0 // dt), ticks - 1)
        for n in work.chunks(env.dag, int(eng.prefill[r])):
            for li, c in enumerate(router.chunk(rng, n, t0, int(eng.task[r]))):
                cols = ex.layers[li]
                calls[k0, cols] += c > 0
                tokens[k0, cols] += c
        d = int(eng.decodes[r])
        if not d:
            continue
        k = np.minimum(((t0 + first_s + next_s * np.arange(d)) // dt).astype(np.int64),
                       ticks - 1)
        for li, picks in enumerate(router.decode(rng, d, t0, int(eng.task[r]))):
            at = (np.repeat(k, picks.shape[1]), ex.layers[li][picks].ravel())
            np.add.at(calls, at, 1.0)  # a decode call carries one token
            np.add.at(tokens, at, 1.0)
    return Hindsight(dt=dt, calls=calls / dt, tokens=tokens / dt)


def pass_times_s(env: SimEnv) -> tuple[float, float]:
    """The no-load time (s) of a request's prefill pass (at the trace's mean prefill) and of
    one decode pass at the pipeline's default configuration: along the longest stage path,
    each hop's RPC plus each stage's call (an MoE layer's at its mean tokens per expert)."""
    eng, dag, sim = env.server, env.dag, env.s.simulator
    mean_prefill = float(np.mean(eng.prefill)) if eng.prefill.size else 1.0

    def one(plan, tokens: float) -> float:
        best: list[float] = []
        for i in range(len(plan.stages)):
            nodes = plan.nodes[i]
            spec = dag.spec(dag.nodes[nodes[0]])
            per_call = tokens * (spec.top_k or 1) / len(nodes) if plan.moe[i] else tokens
            model = env.models[nodes[0]]
            ms = float(model.batch_ms(1, max(per_call, 1.0), cpu=spec.cpu, share=spec.gpu_share,
                                      parallelism=max(spec.parallelism, 1)))
            prev = max((best[p] for p in plan.preds[i]), default=0.0)
            best.append(prev + ms + sim.rpc_overhead_ms)
        return max((best[i] for i in plan.sinks), default=0.0) / 1000.0

    return one(eng.plan_first, mean_prefill), one(eng.plan_next, 1.0)


def segment_cost(env: SimEnv) -> float:
    """What the segments' pods cost over the episode (they keep their own HPA)."""
    c, n = env.cluster.cols, env.cluster.n
    seg = env.is_segment[c["node"][:n]]
    overlap = np.clip(np.minimum(c["end"][:n], env.duration_s) - c["start"][:n], 0, None)
    return float((overlap * env.cluster.price_per_s())[seg].sum())


def start_episode(dag, settings, decider, *, profile: str, trace: str, duration_s: float,
                  seed: int, time_scale: float = 1.0, rate_scale: float | None = None) -> SimLoop:
    """A decider's episode, reset and ready to run, as every command runs one: the env under
    the decider's ``simulator_overrides`` (the settings its model needs), the loop under
    ``profile``, both reset to ``seed``, and the true offered load handed to a decider that
    reads ahead (``see_future``)."""
    sim_settings = with_overrides(settings, getattr(decider, "simulator_overrides", {}))
    env = SimEnv(dag, sim_settings, trace=trace, duration_s=duration_s, time_scale=time_scale,
                 rate_scale=rate_scale)
    loop = SimLoop(env, settings=settings, profile=profile)
    loop.reset(seed)
    decider.reset(seed)
    if hasattr(decider, "see_future"):  # only the hindsight policies read ahead
        decider.see_future(hindsight(env, Experts(dag)))
    return loop


def episode_cost(loop: SimLoop, decider) -> float:
    """The episode's cost as reported: the simulator's bill, or the decider's own account of
    it where it has one (``floor``: its experts' busy time plus the segments' bill)."""
    if hasattr(decider, "episode_cost"):
        return float(decider.episode_cost(segment_cost=segment_cost(loop.env)))
    return float(summarise(loop.env).cost)


@dataclass
class Episode:
    """One run's episode, finished: the loop (its env, its applied decisions), the decider,
    the guard profile it ran under, the decider's times and the hottest expert's replicas."""

    loop: SimLoop
    decider: Any
    profile: str
    decide_ms: list[float]
    hot: str
    hot_replicas: list[float]
    interventions: int = 0  # expert-ticks the shield lifted


@functools.lru_cache(maxsize=16)
def _random_pipeline(ref: str, config: str | None) -> Any:
    """A random pipeline, drawn once per process and config: its draw runs a no-load episode,
    which every run of it would otherwise repeat."""
    return load_pipeline(ref, settings=load_settings(config))


def run_episode(spec: RunSpec, *, thread_cap: int | None = None) -> Episode:
    """Run one combination's episode through the one tick (:class:`~smoelib.sim.loop.SimLoop`)
    under the spec's guard profile (default: the decider's own)."""
    base = load_settings(spec.config)
    dag = (_random_pipeline(spec.pipeline, spec.config) if spec.pipeline.startswith(RANDOM)
           else load_pipeline(spec.pipeline, settings=base))
    # the pipeline's own baseline settings first, so that a trial's overrides win over them
    settings = with_overrides(base.for_pipeline(dag.name), dict(spec.overrides))
    if thread_cap is not None and settings.policy.torch_threads > thread_cap:
        settings = with_overrides(settings, {"policy.torch_threads": thread_cap})
    decider = get_decider(spec.policy, dag=dag, settings=settings)
    loop = start_episode(dag, settings, decider, profile=spec.guards or default_guards(spec.policy),
                         trace=spec.trace, duration_s=spec.duration_s, seed=spec.seed)
    env, ex = loop.env, Experts(dag)
    decide_ms: list[float] = []
    replicas: list[np.ndarray] = []
    lifted = [0]

    def record(s: LoopStep) -> None:
        decide_ms.append(s.tick.decide_ms)
        replicas.append(s.step.observation.replicas_ready[ex.index].copy())
        lifted[0] += lifts(s.tick.fired)

    loop.run(decider, on_step=record)
    # the hottest expert: the most calls served (then tokens) over the episode
    totals = env.tel.totals
    hot = int(np.argmax(totals["calls"][ex.index] + 1e-9 * totals["tokens"][ex.index]))
    return Episode(loop, decider, loop.profile.name, decide_ms, ex.nodes[hot],
                   [float(r[hot]) for r in replicas], lifted[0])


def run_one(spec: RunSpec, *, thread_cap: int | None = None) -> dict[str, Any]:
    """Run one combination; returns ``{"run": row, "series": per-window plot data}``.
    ``thread_cap``: at most this many policy inference threads (a worker's share of the cores
    in a parallel run: more make OpenMP spin against the other workers)."""
    ep = run_episode(spec, thread_cap=thread_cap)
    env, decider, dag, decide_ms = ep.loop.env, ep.decider, ep.loop.env.dag, ep.decide_ms
    s = summarise(env)
    cost = episode_cost(ep.loop, decider)
    win = window_series(env)
    att = win["attainment"][win["requests"] > 0]
    row = {**s.as_dict(), "worst_window_attainment": float(att.min()) if att.size else 1.0,
           "pipeline": dag.name, "trace": spec.trace, "policy": spec.policy,
           "seed": spec.seed, "duration_s": spec.duration_s, "cost": cost,
           # floor's rows: one warm replica of every offered expert at its cheapest (NaN else)
           "warm_cost": (decider.warm_cost(segment_cost=segment_cost(env))
                         if hasattr(decider, "warm_cost") else math.nan),
           "decide_ms_p50": float(np.median(decide_ms)) if decide_ms else 0.0,
           "guards": ep.profile,
           # the shield's lifts per expert-tick (0 where the profile has no shield)
           "intervention_rate": ep.interventions / max(len(decide_ms) * len(dag.experts), 1)}
    row = {k: row[k] for k in RUN_KEYS}
    series = {"t_s": win["t_s"].tolist(), "ttft_p95_ms": win["ttft_p95_ms"].tolist(),
              "tpot_p95_ms": win["tpot_p95_ms"].tolist(),
              "attainment": win["attainment"].tolist(),
              "hot_expert": ep.hot, "hot_t_s": (np.arange(len(ep.hot_replicas))
                                                 * env.dt).tolist(),
              "hot_replicas": ep.hot_replicas}
    return {"run": row, "series": series, "spec": asdict(spec)}


def run_all(specs: list[RunSpec], *, jobs: int = 1, progress: bool = True,
            journal: Path | None = None) -> list[dict[str, Any]]:
    """Run every spec, in ``jobs`` spawned processes (each builds its own env and uses at most
    its share of the cores for policy inference), with a progress bar; results in the order
    of ``specs``. With a ``journal`` (a JSON-lines file) each run is appended as it finishes
    and the runs it already holds are not run again: a stopped evaluation resumes. A run is
    known by its spec and the contents of its config file; a change of code is not seen
    (start a new journal after one)."""
    from tqdm import tqdm

    out: list[dict[str, Any] | None] = [None] * len(specs)
    done = _journal(journal)
    for i, spec in enumerate(specs):
        out[i] = done.get(_key(spec))
    todo = [i for i, r in enumerate(out) if r is None]
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="run",
               disable=not progress)

    def finished(i: int, res: dict[str, Any]) -> None:
        out[i] = res
        if journal is not None:
            with journal.open("a") as f:
                f.write(json.dumps({**res, "key": _key(specs[i])}, allow_nan=True) + "\n")
        bar.update(1)

    if jobs <= 1:
        for i in todo:
            finished(i, run_one(specs[i]))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        cap = max(1, (os.cpu_count() or 1) // jobs)
        # an executor, not a multiprocessing.Pool: a worker that dies (killed for memory, or a
        # script without a main guard that every spawned worker re-runs) breaks it with an
        # error, where a Pool replaces the worker and waits for its task forever
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_indexed, (i, specs[i], cap)) for i in todo]
            try:
                for future in as_completed(futures):
                    finished(*future.result())
            except BrokenProcessPool:
                kept = f"; the finished runs are in {journal}" if journal is not None else ""
                raise PermanentError(
                    "a run's worker process ended abruptly (killed for memory, or a script "
                    "that runs evaluations without `if __name__ == \"__main__\":`, which "
                    f"each spawned worker re-runs){kept}") from None
    bar.close()
    return [r for r in out if r is not None]


def _key(spec: RunSpec) -> str:
    """A run's identity in the journal: its spec and its config file's contents."""
    config = hashlib.sha256(Path(spec.config).read_bytes()).hexdigest() if spec.config else ""
    return json.dumps([asdict(spec), config], sort_keys=True, default=str)


def _journal(path: Path | None) -> dict[str, dict[str, Any]]:
    """The runs a journal holds, by key (a line cut short by a stop is skipped)."""
    if path is None or not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        try:
            res = json.loads(line)
            out[res.pop("key")] = res
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


def _indexed(item: tuple[int, RunSpec, int]) -> tuple[int, dict[str, Any]]:
    i, spec, cap = item
    return i, run_one(spec, thread_cap=cap)


def write_json(results: list[dict[str, Any]], out: Path) -> None:
    """``results.json``: ``{"runs": [...]}`` with the DESIGN.md keys."""
    runs = [{k: r["run"][k] for k in RUN_KEYS} for r in results]
    (out / "results.json").write_text(json.dumps({"runs": runs}, indent=1,
                                                 allow_nan=True) + "\n")


def _stat(values: list[float], fmt: str) -> str:
    v = np.asarray(values, float)
    if v.size == 0 or not np.isfinite(v).all():
        return "n/a"
    return f"{v.mean():{fmt}} ± {v.std():{fmt}}" if v.size > 1 else f"{v[0]:{fmt}}"


def _scenarios(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["pipeline"], r["trace"]), []).append(r)
    return out


def _by(rows: list[dict[str, Any]], policy: str) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in rows if r["policy"] == policy}


def table_markdown(results: list[dict[str, Any]], *, reference: str = "hpa") -> str:
    """One table per scenario: cost relative to ``reference`` (per seed, then mean ± sd over
    seeds), P95 TTFT and TPOT against their SLOs, SLO attainment, window violations, dropped
    requests, 429s, pods replaced, the shield's lifts per expert-tick, decide time; then the
    acceptance checks."""
    rows = [r["run"] for r in results]
    lines: list[str] = []
    for (pipe, trace), rs in _scenarios(rows).items():
        ref = _by(rs, reference)
        lines += [f"### {pipe} / {trace}", "",
                  f"| policy | guards | cost / {reference} | cost | P95 TTFT / SLO | "
                  "P95 TPOT / SLO | attainment | window violations | dropped | 429s | "
                  "pods replaced | shield lifts | decide ms (p50) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for policy in dict.fromkeys(r["policy"] for r in rs):
            mine = _by(rs, policy)
            rel = [mine[s]["cost"] / ref[s]["cost"] for s in mine if s in ref]
            def col(k: str, d: str | None = None, mine=mine) -> list[float]:
                return [m[k] / (m[d] if d else 1.0) for m in mine.values()]
            guards = "/".join(dict.fromkeys(m["guards"] for m in mine.values()))
            lifts = (_stat(col("intervention_rate"), ".3f")  # results from before the shield
                     if all("intervention_rate" in m for m in mine.values()) else "n/a")
            lines.append(
                f"| {policy} | {guards} | {_stat(rel, '.3f') if rel else 'n/a'} | "
                f"{_stat(col('cost'), '.3f')} | "
                f"{_stat(col('ttft_p95_ms', 'ttft_slo_ms'), '.3f')} | "
                f"{_stat(col('tpot_p95_ms', 'tpot_slo_ms'), '.3f')} | "
                f"{_stat(col('slo_attainment'), '.4f')} | "
                f"{_stat(col('window_violation_rate'), '.3f')} | "
                f"{_stat(col('dropped'), '.1f')} | {_stat(col('rejected'), '.0f')} | "
                f"{_stat(col('pods_replaced'), '.1f')} | "
                f"{lifts} | "
                f"{_stat(col('decide_ms_p50'), '.2f')} |")
        lines.append("")
    lines += ["### Acceptance checks", ""] + [f"- {c}" for c in checks(results)] + [""]
    return "\n".join(lines)


def checks(results: list[dict[str, Any]]) -> list[str]:
    """Per scenario (mean over seeds): ``floor`` below every policy, ``oracle`` at most
    ``queueing``, ``static-best`` at least 1.3x ``oracle`` on conv-eval and 1.5x on the diurnal
    and bursty families, ``static-mean`` below the attainment target in its worst 60 s window
    (the peak), ``queueing`` cheaper than ``hpa`` with no more window violations and drops,
    ``smoe`` against ``queueing``, ``hpa`` and ``shield-only`` on paired seeds (the 95 %
    interval of the cost ratio below 1, attainment within 0.2 points, no more violations or
    drops: :func:`paired_ratio`); then the room an ideal policy has,
    ``1 - oracle / queueing`` and ``1 - oracle / static-best``, and the share of it ``smoe``
    won, ``(rival - smoe) / (rival - oracle)``. Each line says PASS, FAIL, ROOM or WON with the
    numbers; checks whose policies did not run are skipped. A failed
    ``static-best`` ratio says when ``floor``'s warm floor (one replica of every offered expert
    at its cheapest, plus the segments) already lies within the ratio of ``static-best``: then
    no policy that serves every call from a warm replica could pass it; a failed ``static-mean``
    check says what it cost against ``static-best`` and the warm floor. ``static-best`` is the
    model's pick at the peak; where another static row (``static-mean``, ``static-peak``) meets
    the attainment target over the episode with no drops at a lower cost, that row is the
    cheapest static configuration measured, and the ratio and the room use it (saying so)."""
    out = []
    keys = ("cost", "warm_cost", "window_violation_rate", "dropped", "worst_window_attainment",
            "attainment_target", "slo_attainment")
    for (pipe, trace), rs in _scenarios([r["run"] for r in results]).items():
        mean = {p: {k: float(np.mean([r.get(k, np.nan) for r in rs if r["policy"] == p]))
                    for k in keys}
                for p in dict.fromkeys(r["policy"] for r in rs)}
        tag = f"{pipe}/{trace}"
        warm = mean.get("floor", {}).get("warm_cost", math.nan)
        rivals = {"queueing": (mean["queueing"]["cost"], "")} if "queueing" in mean else {}
        if "static-best" in mean:
            rivals["static-best"] = _cheapest_static(mean)
        if "floor" in mean and len(mean) > 1:
            other = min((v["cost"], p) for p, v in mean.items() if p != "floor")
            ok = mean["floor"]["cost"] < other[0]
            out.append(f"{'PASS' if ok else 'FAIL'} {tag}: floor {mean['floor']['cost']:.3f} "
                       f"< cheapest other ({other[1]}) {other[0]:.3f}")
        if "oracle" in mean and "queueing" in mean:
            o, q = mean["oracle"]["cost"], mean["queueing"]["cost"]
            out.append(f"{'PASS' if o <= q * (1 + 1e-9) else 'FAIL'} {tag}: oracle {o:.3f} "
                       f"<= queueing {q:.3f}")
        if "oracle" in mean and "static-best" in mean:
            need = 1.3 if trace.startswith("conv") else 1.5 if trace.split(":")[0] in (
                "diurnal", "diurnal-day", "weekly", "bursty") else None
            o, (b, instead) = mean["oracle"]["cost"], rivals["static-best"]
            if need is not None:
                line = (f"{'PASS' if b >= need * o else 'FAIL'} {tag}: static-best {b:.3f}"
                        f"{instead} >= {need} x oracle {o:.3f} ({b / o:.2f}x)")
                if b < need * o and math.isfinite(warm) and b < need * warm:
                    line += ("; unreachable by any policy that serves every call warm: "
                             if o >= warm else "; ")
                    line += f"static-best is {b / warm:.2f}x the warm floor {warm:.3f}"
                    if o < warm:  # the floor's own segments, or experts left cold
                        line += f", which the oracle undercuts ({o / warm:.2f}x)"
                out.append(line)
        if "static-mean" in mean:
            m = mean["static-mean"]
            ok = m["worst_window_attainment"] < m["attainment_target"]
            line = (f"{'PASS' if ok else 'FAIL'} {tag}: static-mean's worst 60 s window "
                    f"attainment {m['worst_window_attainment']:.4f} < target "
                    f"{m['attainment_target']:g}")
            best = mean.get("static-best", {}).get("cost", math.nan)
            if not ok and math.isfinite(best) and m["cost"] >= 0.97 * best:
                line += (f"; sized for the mean it costs {m['cost'] / best:.2f}x static-best "
                         f"(sized for the peak): the mean load needs the peak's configuration")
            if not ok and math.isfinite(warm):
                line += f"; it costs {m['cost'] / warm:.2f}x the warm floor {warm:.3f}"
            out.append(line)
        if "queueing" in mean and "hpa" in mean:
            out.append(_beats(tag, "queueing", mean["queueing"], "hpa", mean["hpa"]))
        for rival in ("queueing", "hpa", "shield-only") if "smoe" in mean else ():
            if rival in mean:
                out.append(_paired(tag, rs, "smoe", rival, mean))
        for rival, (cost, instead) in rivals.items() if "oracle" in mean else ():
            room = 1.0 - mean["oracle"]["cost"] / cost
            out.append(f"ROOM {tag}: 1 - oracle / {rival} = {room:.3f}{instead}")
            if "smoe" in mean:
                out.append(_won(tag, mean["smoe"]["cost"], mean["oracle"]["cost"], cost,
                                f"{rival}{instead}"))
    return out


def _won(tag: str, mine: float, oracle: float, rival: float, name: str) -> str:
    """The share of the room over ``rival`` (its cost less ``oracle``'s) that ``smoe`` won:
    1 at the oracle's cost, 0 at the rival's, negative above it."""
    if not rival - oracle > 1e-9 * abs(rival):
        return (f"WON {tag}: no room over {name} (oracle {oracle:.3f} >= {rival:.3f}); smoe "
                f"{mine:.3f}")
    return (f"WON {tag}: smoe won {(rival - mine) / (rival - oracle):.2f} of the room over "
            f"{name} (({rival:.3f} - smoe {mine:.3f}) / ({rival:.3f} - oracle {oracle:.3f}))")


_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
"""Student's t, two-sided 95 %, for 1-30 degrees of freedom (1.96 beyond)."""
ATTAINMENT_SLACK = 0.002
"""the learned policy's SLO attainment may be this much below a rival's (0.2 points)"""


def paired_ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """The geometric mean of ``a[i] / b[i]`` over paired runs (the same seed: common random
    numbers) and its 95 % confidence interval (Student's t on the log ratios); the interval is
    NaN with fewer than two pairs."""
    logs = np.log(np.asarray(a, float) / np.asarray(b, float))
    g = float(np.exp(logs.mean()))
    if logs.size < 2:
        return g, math.nan, math.nan
    t = _T975[logs.size - 2] if logs.size - 1 <= len(_T975) else 1.96
    half = t * float(logs.std(ddof=1)) / math.sqrt(logs.size)
    return g, float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))


def _paired(tag: str, rows: list[dict[str, Any]], name: str, rival: str,
            mean: dict[str, dict[str, float]]) -> str:
    """``name`` against ``rival`` on the seeds both ran: PASS when the paired cost ratio's
    95 % interval lies below 1 (with one seed, the ratio itself), its SLO attainment is at
    least the rival's minus :data:`ATTAINMENT_SLACK`, and its window violations and drops are
    no more than the rival's (means over seeds)."""
    mine, theirs = _by(rows, name), _by(rows, rival)
    seeds = sorted(set(mine) & set(theirs))
    g, lo, hi = paired_ratio([mine[s]["cost"] for s in seeds],
                             [theirs[s]["cost"] for s in seeds])
    a, b = mean[name], mean[rival]
    cheaper = hi < 1.0 if len(seeds) > 1 else g < 1.0
    ok = (cheaper and a["slo_attainment"] >= b["slo_attainment"] - ATTAINMENT_SLACK
          and a["window_violation_rate"] <= b["window_violation_rate"] + 1e-12
          and a["dropped"] <= b["dropped"])
    interval = (f"95 % CI {lo:.3f}-{hi:.3f} over {len(seeds)} seeds" if len(seeds) > 1
                else "1 seed, no interval")
    return (f"{'PASS' if ok else 'FAIL'} {tag}: {name} / {rival} paired cost {g:.3f} "
            f"({interval}; {a['cost']:.3f} vs {b['cost']:.3f}); attainment "
            f"{a['slo_attainment']:.4f} vs {b['slo_attainment']:.4f}; violations "
            f"{a['window_violation_rate']:.3f} vs {b['window_violation_rate']:.3f}; dropped "
            f"{a['dropped']:.1f} vs {b['dropped']:.1f}")


def _cheapest_static(mean: dict[str, dict[str, float]]) -> tuple[float, str]:
    """``static-best``'s cost, or that of a cheaper static row that meets the attainment target
    over the episode with no drops (the sizer's pick at the peak is the model's, and a
    conservative model can leave a cheaper static configuration that holds), with a note."""
    best = mean["static-best"]["cost"]
    holds = [(v["cost"], p) for p, v in mean.items()
             if p in ("static-mean", "static-peak") and v["cost"] < best and v["dropped"] == 0
             and v["slo_attainment"] >= v["attainment_target"]]
    if not holds:
        return best, ""
    cost, name = min(holds)
    return cost, (f" (that of {name}, which meets the target over the episode at "
                  f"{cost / best:.2f}x the sizer's pick for the peak, {best:.3f})")


def _beats(tag: str, name: str, a: dict[str, float], rival: str, b: dict[str, float]) -> str:
    """``name`` strictly cheaper than ``rival`` with no more window violations and drops."""
    ok = (a["cost"] < b["cost"] and a["window_violation_rate"]
          <= b["window_violation_rate"] + 1e-12 and a["dropped"] <= b["dropped"])
    return (f"{'PASS' if ok else 'FAIL'} {tag}: {name} cost {a['cost']:.3f} vs {rival} "
            f"{b['cost']:.3f}; violations {a['window_violation_rate']:.3f} vs "
            f"{b['window_violation_rate']:.3f}; dropped {a['dropped']:.1f} vs {b['dropped']:.1f}")
