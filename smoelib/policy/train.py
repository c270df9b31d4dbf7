"""Training the sMoE policy: behaviour cloning from ``queueing``, then PPO with a Lagrange
multiplier on the SLO, on the simulator's training split (docs/training.md).

The loop, one update at a time (``update`` counts both phases):

1. **Behaviour cloning** (updates ``0 .. bc_rounds - 1``, DAgger): each round runs
   ``bc_episodes`` episodes, in round 0 all acted by the teacher, later every other one by the
   agent itself (greedy), always labelled by the teacher on the states visited; the agent
   maximises the log-probability of the teacher's actions and fits its value head to the
   episodes' returns.
2. **PPO** (the rest): ``scenarios`` curriculum scenarios of one pipeline (each its own
   trace, seed and request rate), each run by ``envs`` rollouts on common random numbers, in
   the fast mode (``engine``, the fluid engine by default) and decided in one batched pass;
   reward ``-(cost / reference cost) - lambda * overrun - shield_penalty * lifts`` per tick
   (scaled; ``lifts`` the share of experts the production shield lifted); GAE advantages,
   minus the leave-one-out mean of the scenario's other rollouts at the same tick (Decima's
   input-dependent baseline); clipped surrogate, value loss, per-expert entropy bonus, KL early
   stop; then one dual-ascent step on ``lambda`` towards "worst 60 s window P95 <= (1 +
   slo_target) x SLO". With ``reference`` (the default) the teacher also runs each scenario,
   and the overrun priced and the constraint are what the agent adds beyond the teacher's.

Every random draw is a function of ``(seed, update)``: a stopped run resumed from its checkpoint
continues exactly as an uninterrupted one, and one seed gives one checkpoint. Validation on fixed
training-split scenarios (seed below 1000), request-level (the config's own engine), keeps
``best.pt``: the cheapest policy that is no worse than the teacher on SLO violations there.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_type_hints

import numpy as np
import torch

from smoelib.core.guards import PROFILES
from smoelib.errors import ConfigError, Problem
from smoelib.policy import ppo
from smoelib.policy.agent import SMoEAgent
from smoelib.policy.baselines.common import with_overrides
from smoelib.policy.checkpoint import load_checkpoint, save_checkpoint
from smoelib.policy.config import PolicyConfig, choice_problems
from smoelib.policy.curriculum import (
    TRAIN_TRACES,
    Scenario,
    log_uniform,
    scenarios,
    split_problems,
    validation_scenarios,
)
from smoelib.policy.features import PolicyInput
from smoelib.policy.imitation import bc_loss
from smoelib.policy.pointer import Actions
from smoelib.policy.rollout import EnvRun, EpisodeStats, Rollout, collect
from smoelib.settings.experiment import Simulator
from smoelib.sim.targets import reference_cost

__all__ = ["TrainConfig", "TrainResult", "train", "crn_advantages", "excess_over",
           "reference_cost", "run_settings", "ENGINES", "RATIOS", "LOG_KEYS"]

ENGINES: tuple[str, ...] = get_args(get_type_hints(Simulator)["engine"])
"""the simulator engines a training run may pick (``simulator.engine``)"""
RATIOS: tuple[str, ...] = ("joint", "expert")
"""PPO's probability ratios (``TrainConfig.ratio``)"""
_PIPELINES = ("examples/pipelines/bert-moe.yml", "examples/pipelines/gpt2-moe.yml",
              "examples/pipelines/bert2bert-moe.yml")
LOG_KEYS = (
    "update", "phase", "env_steps", "wall_s", "pipeline", "trace", "seed", "rate_scale",
    "duration_s",
    "charts/episode_cost", "charts/cost_per_tick", "charts/slo_ratio", "charts/worst_window",
    "charts/violation_rate", "charts/dropped", "charts/return", "charts/lagrange",
    "charts/excess", "charts/teacher_worst_window", "charts/shield_lifts",
    "losses/bc", "losses/bc_kept", "losses/policy", "losses/value", "losses/entropy",
    "losses/approx_kl", "losses/joint_kl", "losses/clip_fraction", "val/cost_ratio",
    "val/worst_window", "val/violation_rate", "val/feasible")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored in its checkpoints (CleanRL's ``Args``)."""

    pipelines: tuple[str, ...] = _PIPELINES
    """pipeline.yml paths trained on (the curriculum opens them smallest first)"""
    random_pipelines: int = 0
    """random pipelines trained on besides ``pipelines``: those of seeds 0 to N-1
    (:mod:`smoelib.sim.pipelines`; seeds from 1000 on are left for evaluation)"""
    traces: tuple[str, ...] = TRAIN_TRACES
    """training traces only: conv-train and the synthetic ones (DESIGN.md, "Traces")"""
    seeds: tuple[int, int] = (0, 1000)
    """episode seeds are drawn from [lo, hi); hi <= 1000 (1000 and above: evaluation)"""
    config: str | None = None
    """config.yaml of the simulated cluster (None: the packaged defaults)"""
    architecture: str = "smoe"
    """smoe, smoe-mlp or smoe-independent (PolicyConfig.architecture)"""
    hidden: int = 32
    """network width (PolicyConfig.hidden)"""
    capacity: str = PolicyConfig.capacity
    """how the decoder's capacity masks share GPUs: even or spare (PolicyConfig.capacity)"""
    replica_base: str = PolicyConfig.replica_base
    """what the replica head's changes are relative to: current or queueing (a residual
    policy over the queueing plan; PolicyConfig.replica_base)"""
    features: str = "lookahead"
    """the node features: base or lookahead (PolicyConfig.features; a checkpoint without the
    field reads base)"""
    seed: int = 1
    """seed of the parameters, the scenarios and the sampling"""
    teacher: str = "queueing"
    """registered decider cloned in the warm start"""
    guards: str = "production"
    """the guard profile every training and validation tick runs under (what the controller
    runs: the policy learns in the loop it is deployed in)"""
    bc_rounds: int = 4
    """behaviour-cloning (DAgger) rounds (updates)"""
    bc_episodes: int = 6
    """episodes per round (pipelines in turn)"""
    bc_epochs: int = 8
    """passes over a round's samples"""
    bc_batch: int = 64
    """samples per behaviour-cloning minibatch (ticks)"""
    bc_learning_rate: float = 1e-3
    """Adam step size while cloning"""
    updates: int = 340
    """PPO updates after cloning (a resumed run may extend or cut it); the default collects
    about 310,000 control ticks"""
    scenarios: int = 4
    """scenarios per update (one pipeline; each its own trace, seed and request rate)"""
    envs: int = 4
    """rollouts per scenario, on its seed (common random numbers): an update steps
    ``scenarios x envs`` environments"""
    rate_scales: tuple[float, float] = (0.3, 3.0)
    """each training scenario's request rate is the config's times a factor drawn log-uniformly
    from ``[lo, hi]`` (cloning episodes too; validation runs at the config's rate)"""
    engine: str = "fluid"
    """the simulator engine of the cloning and PPO episodes (fluid: the fast training mode;
    compiled or reference: request-level). Validation runs the config's own engine"""
    episode_start_s: float = 120.0
    """curriculum: first episode length (simulated s)"""
    episode_s: float = 300.0
    """curriculum: final episode length (simulated s), also the cloning episodes'"""
    curriculum_updates: int = 60
    """PPO updates over which episodes lengthen and pipelines open"""
    update_epochs: int = 4
    """PPO epochs per update"""
    minibatches: int = 4
    """PPO minibatches per epoch"""
    learning_rate: float = 3e-4
    """Adam step size for PPO"""
    gamma: float = 0.99
    """discount per control tick"""
    gae_lambda: float = 0.95
    """GAE(lambda) trace decay"""
    clip_range: float = 0.2
    """PPO ratio clip epsilon"""
    ratio: str = "joint"
    """PPO's probability ratio: ``joint`` (one per tick: the product over every expert's
    choices) or ``expert`` (one per expert slot, each clipped on its own against the tick's
    advantage; ``target_kl`` then bounds the KL per expert)"""
    value_coef: float = 0.5
    """weight of the value loss"""
    max_grad_norm: float = 0.5
    """gradient norm clip"""
    entropy_coef: float = 1e-3
    """weight of the entropy bonus (entropy per expert)"""
    target_kl: float = 0.05
    """stop an update's epochs when the approximate KL exceeds this (0: never)"""
    reward_scale: float = 0.1
    """rewards are multiplied by this (keeps returns and the value loss near 1)"""
    shield_penalty: float = 20.0
    """reward per unit of shield lifts (the share of experts lifted in a tick), in
    reference-cost ticks: training pays for every decision the shield corrects. At 1.0 (before
    the seventeenth session) one lifted expert of 72 cost 1/72 of a tick's cost, and the policy
    left burst capacity to the shield (docs/training.md)"""
    lagrange_init: float = 10.0
    """initial SLO multiplier (reward per unit of overrun, in reference-cost ticks)"""
    lagrange_lr: float = 2.0
    """dual-ascent step per update, per unit of constraint violation"""
    lagrange_max: float = 200.0
    """the multiplier is capped here"""
    slo_target: float = -0.1
    """the constraint: worst 60 s window P95 / SLO - 1 <= slo_target (negative: a margin)"""
    reference: bool = True
    """each PPO scenario also runs the teacher on its seed, and the SLO penalty and the
    constraint count only what the agent overruns beyond it, tick by tick and in the worst
    window: never less safe than the teacher, and no multiplier driven to its cap by scenarios
    (3x rates) where the teacher itself misses"""
    excess_allowance: float = 0.02
    """with ``reference``: the multiplier rises while the rollouts' mean worst-window excess
    over the teacher's (only the part above it: easy scenarios' slack does not offset a
    hard one's excess) is above this fraction of the SLO, and falls below it"""
    validate_every: int = 20
    """PPO updates between validations (and after cloning; 0: never)"""
    validation_s: float = 300.0
    """validation episode length (simulated s)"""
    validation_seed: int = 999
    """validation episodes' seed (training split: below 1000)"""
    validation_tolerance: float = 0.02
    """a validated policy is feasible when, in every scenario, its worst window is within this
    much (a fraction of the SLO) of the teacher's or of the SLO, whichever is higher, and its
    violated windows and drops are no more than the teacher's: a 60 s window's P95 moves by
    about 1 % of the SLO between policies that decide the same"""
    checkpoint_every: int = 5
    """updates between checkpoints (and at the end of cloning, of the run and on a stop)"""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems, source="TrainConfig")

    def problems(self) -> list[Problem]:
        """Every invalid field at once, the data split first."""
        p = split_problems(self.traces, self.seeds)
        if not 0 <= self.validation_seed < 1000:
            p.append(Problem("validation_seed", "must be below 1000 (training split)"))
        p += choice_problems(architecture=self.architecture, capacity=self.capacity,
                             replica_base=self.replica_base, features=self.features)
        if self.guards not in PROFILES:
            p.append(Problem("guards", f"unknown guard profile {self.guards!r}; known: "
                                       f"{', '.join(PROFILES)}"))
        if not self.pipelines:
            p.append(Problem("pipelines", "needs at least one pipeline"))
        if not 0 <= self.random_pipelines <= 1000:
            p.append(Problem("random_pipelines", "must be 0-1000 (seeds from 1000 on are "
                                                 "evaluation's)"))
        for name in ("hidden", "bc_episodes", "bc_epochs", "bc_batch", "scenarios", "envs",
                     "update_epochs", "minibatches", "checkpoint_every"):
            if getattr(self, name) < 1:
                p.append(Problem(name, "must be >= 1"))
        for name in ("bc_rounds", "updates", "curriculum_updates", "validate_every"):
            if getattr(self, name) < 0:
                p.append(Problem(name, "must be >= 0"))
        for name in ("episode_start_s", "episode_s", "validation_s", "learning_rate",
                     "bc_learning_rate", "reward_scale", "clip_range", "max_grad_norm"):
            if not getattr(self, name) > 0:
                p.append(Problem(name, "must be > 0"))
        for name in ("excess_allowance", "shield_penalty"):
            if not getattr(self, name) >= 0:
                p.append(Problem(name, "must be >= 0"))
        if self.validation_tolerance < 0:
            p.append(Problem("validation_tolerance", "must be >= 0"))
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                p.append(Problem(name, "must be within [0, 1]"))
        lo, hi = self.rate_scales
        if not 0 < lo <= hi:
            p.append(Problem("rate_scales", f"needs 0 < lo <= hi, got ({lo}, {hi})"))
        if self.ratio not in RATIOS:
            p.append(Problem("ratio", f"unknown ratio {self.ratio!r}; known: "
                                      f"{', '.join(RATIOS)}"))
        if self.engine not in ENGINES:
            p.append(Problem("engine", f"unknown engine {self.engine!r}; known: "
                                       f"{', '.join(ENGINES)}"))
        if self.envs < 2 and self.updates > 0:
            p.append(Problem("envs", "PPO needs >= 2 rollouts for the common-random-numbers "
                                     "baseline"))
        return p

    def to_dict(self) -> dict[str, Any]:
        """Primitives only (lists for tuples), for checkpoints."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    def policy_config(self, settings: Any) -> PolicyConfig:
        """The network's config: the settings' action space plus this run's choices."""
        return PolicyConfig.from_settings(
            settings, architecture=self.architecture, hidden=self.hidden, seed=self.seed,
            capacity=self.capacity, replica_base=self.replica_base, features=self.features)

    @property
    def total_updates(self) -> int:
        return self.bc_rounds + self.updates


@dataclass
class TrainResult:
    """``finished``: every update ran (False: stopped by the time limit, resumable)."""

    update: int
    finished: bool
    checkpoint: Path
    best: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


# ---- small pieces ---------------------------------------------------------------------------
def crn_advantages(adv: torch.Tensor, group: int | None = None) -> torch.Tensor:
    """Subtract, per tick, the mean advantage of the *other* rollouts of the same scenario
    (leave-one-out, so the baseline never depends on the rollout's own actions): what a
    scenario's rollouts share through the common arrivals cancels. Shapes: ``(T, G * K)`` ->
    the same, columns scenario-major in groups of ``group = K >= 2`` (default: one group)."""
    t, n = adv.shape
    k = n if group is None else group
    a = adv.reshape(t, n // k, k)
    others = (a.sum(-1, keepdim=True) - a) / (k - 1)
    return (a - others).reshape(t, n)


def run_settings(settings: Any, cfg: TrainConfig, rate_scale: float) -> Any:
    """The settings a training episode runs: the run's engine, the config's rate times
    ``rate_scale``."""
    return with_overrides(settings, {
        "simulator.engine": cfg.engine,
        "simulator.rate_scale": settings.simulator.rate_scale * rate_scale})


def _rows(inp: PolicyInput, actions: Actions, idx: torch.Tensor
          ) -> tuple[PolicyInput, Actions]:
    """The batch rows ``idx`` of a collated input and its actions."""
    return (inp._replace(x=inp.x[idx], replicas=inp.replicas[idx],
                         choice_mask=inp.choice_mask[idx], budget=inp.budget[idx]),
            Actions(order=actions.order[idx], choices=actions.choices[idx]))


def _generator(seed: int, update: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + update)


def _episode_charts(episodes: list[EpisodeStats], ticks: int) -> dict[str, float]:
    mean = lambda k: float(np.mean([getattr(e, k) for e in episodes]))  # noqa: E731
    return {"charts/episode_cost": mean("cost"),
            "charts/cost_per_tick": mean("cost") / max(ticks, 1),
            "charts/slo_ratio": mean("slo_ratio"),
            "charts/worst_window": mean("worst_window"),
            "charts/violation_rate": mean("violation_rate"), "charts/dropped": mean("dropped")}


class _Log:
    """``log.csv`` (``LOG_KEYS`` columns) and, when installed, TensorBoard. A resumed run
    keeps the rows up to its checkpoint and appends."""

    def __init__(self, out: Path, *, keep_until: int):
        self.path = out / "log.csv"
        rows = []
        if keep_until > 0 and self.path.exists():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["update"]) < keep_until]
        self.wall0 = float(rows[-1]["wall_s"]) if rows else 0.0
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, LOG_KEYS)
            w.writeheader()
            w.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tb"))
        except ImportError:  # TensorBoard is optional
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, LOG_KEYS).writerow({k: row.get(k, "") for k in LOG_KEYS})
        if self.tb is not None:
            for k, v in row.items():
                if "/" in k and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, row["update"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---- the phases -----------------------------------------------------------------------------
def _bc_round(agent, opt, cfg: TrainConfig, *, update: int, dags, settings, refs,
              lagrange: float) -> tuple[dict[str, float], int]:
    """One DAgger round: collect labelled episodes, then ``bc_epochs`` passes over them."""
    rng = np.random.default_rng([cfg.seed, update, 0xBC])
    gen = _generator(cfg.seed, update)
    pipes = list(dags)
    data: dict[str, list[tuple[Rollout, torch.Tensor]]] = {}
    episodes, steps = [], 0
    for i in range(cfg.bc_episodes):
        pipe = pipes[i % len(pipes)]
        trace = cfg.traces[int(rng.integers(len(cfg.traces)))]
        seed = int(rng.integers(*cfg.seeds))
        run = EnvRun(run_settings(settings, cfg, log_uniform(rng, cfg.rate_scales)), trace, seed)
        mode = "teacher" if update == 0 or i % 2 == 0 else "greedy"
        agent.eval()
        ro = collect(agent, dag=dags[pipe], runs=[run], duration_s=cfg.episode_s, mode=mode,
                     teacher=cfg.teacher, label=True, guards=cfg.guards)
        r = cfg.reward_scale * ppo.reward(ro.cost / refs[pipe], ro.overrun, lagrange,
                                          ro.lifts, cfg.shield_penalty)
        _, returns = ppo.gae(r, torch.zeros_like(r), ro.dones, torch.zeros(1),
                             gamma=cfg.gamma, lam=1.0)  # Monte-Carlo returns
        data.setdefault(pipe, []).append((ro, returns.reshape(-1)))
        episodes += ro.episodes
        steps += ro.steps
    for g in opt.param_groups:
        g["lr"] = cfg.bc_learning_rate
    agent.train()
    losses, kept = [], []
    batches = []
    for pipe, items in data.items():
        inp = _cat_inputs([ro.inputs for ro, _ in items])
        labels = Actions(order=torch.cat([ro.labels.order for ro, _ in items]),
                         choices=torch.cat([ro.labels.choices for ro, _ in items]))
        returns = torch.cat([ret for _, ret in items])
        batches.append((pipe, inp, labels, returns))
    for _ in range(cfg.bc_epochs):
        work = []
        for bi, (_, inp, _, _) in enumerate(batches):
            perm = torch.randperm(inp.x.shape[0], generator=gen)
            work += [(bi, perm[j:j + cfg.bc_batch])
                     for j in range(0, perm.numel(), cfg.bc_batch)]
        for w in torch.randperm(len(work), generator=gen).tolist():
            bi, idx = work[w]
            pipe, inp, labels, returns = batches[bi]
            sub, acts = _rows(inp, labels, idx)
            out = agent(sub, actions=acts)
            nll, k = bc_loss(out.log_prob, len(dags[pipe].experts))
            loss = nll + cfg.value_coef * ppo.value_loss(out.value, returns[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            opt.step()
            losses.append(float(nll.detach()))
            kept.append(float(k))
    stats = {"losses/bc": float(np.mean(losses[-len(work):])),
             "losses/bc_kept": float(np.mean(kept)),
             **_episode_charts(episodes, steps // max(len(episodes), 1))}
    return stats, steps


def _cat_inputs(items: list[PolicyInput]) -> PolicyInput:
    first = items[0]
    return first._replace(x=torch.cat([i.x for i in items]),
                          replicas=torch.cat([i.replicas for i in items]),
                          choice_mask=torch.cat([i.choice_mask for i in items]),
                          budget=torch.cat([i.budget for i in items]))


def _ppo_update(agent, opt, cfg: TrainConfig, *, update: int, dags, sizes, settings, refs,
                lagrange: float) -> tuple[dict[str, Any], int, float]:
    """One PPO update on ``cfg.scenarios`` curriculum scenarios of one pipeline, ``cfg.envs``
    rollouts each; returns stats, env steps, the new lambda."""
    drawn = scenarios(update - cfg.bc_rounds, pipelines=list(dags), sizes=sizes,
                      traces=cfg.traces, seeds=cfg.seeds, seed=cfg.seed,
                      start_s=cfg.episode_start_s, end_s=cfg.episode_s,
                      ramp=cfg.curriculum_updates, tick_s=settings.control.interval_s,
                      count=cfg.scenarios, rate_scales=cfg.rate_scales)
    sc = drawn[0]
    runs = [EnvRun(run_settings(settings, cfg, d.rate_scale), d.trace, d.seed)
            for d in drawn for _ in range(cfg.envs)]
    gen = _generator(cfg.seed, update)
    agent.eval()
    ro = collect(agent, dag=dags[sc.pipeline], runs=runs, duration_s=sc.duration_s,
                 mode="sample", generator=gen, guards=cfg.guards)
    over, excess, ref_worst = _constraint(agent, cfg, ro, runs, dag=dags[sc.pipeline],
                                          duration_s=sc.duration_s)
    rewards = cfg.reward_scale * ppo.reward(ro.cost / refs[sc.pipeline], over, lagrange,
                                            ro.lifts, cfg.shield_penalty)
    adv, returns = ppo.gae(rewards, ro.value, ro.dones, torch.zeros(len(runs)),
                           gamma=cfg.gamma, lam=cfg.gae_lambda)
    adv = crn_advantages(adv, group=cfg.envs).reshape(-1)
    returns, old_v = returns.reshape(-1), ro.value.reshape(-1)
    factored = cfg.ratio == "expert"
    old_lp = (ro.slot_log_prob.flatten(0, 1) if factored  # (T*K, L, E)
              else ro.log_prob.reshape(-1))
    mask = ro.inputs.expert_valid if factored else None
    n_experts = len(dags[sc.pipeline].experts)
    for g in opt.param_groups:
        g["lr"] = cfg.learning_rate
    agent.train()
    b = adv.numel()
    size = max(1, b // cfg.minibatches)
    acc: dict[str, list[float]] = {}
    stop = False
    for _ in range(cfg.update_epochs):
        perm = torch.randperm(b, generator=gen)
        for j in range(0, b - size + 1, size):
            idx = perm[j:j + size]
            sub, acts = _rows(ro.inputs, ro.actions, idx)
            out = agent(sub, actions=acts)
            a = adv[idx]
            a = (a - a.mean()) / (a.std() + 1e-8)
            pl, st = ppo.policy_loss(out.slot_log_prob if factored else out.log_prob,
                                     old_lp[idx], a, clip=cfg.clip_range, mask=mask)
            vl = ppo.value_loss(out.value, returns[idx], old_values=old_v[idx],
                                clip=cfg.clip_range)
            ent = ppo.entropy_loss(out.entropy / n_experts)
            loss = pl + cfg.value_coef * vl + cfg.entropy_coef * ent
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            opt.step()
            for k, v in {"losses/policy": pl, "losses/value": vl, "losses/entropy": -ent,
                         **st}.items():
                acc.setdefault(k, []).append(float(v.detach()))
            if cfg.target_kl > 0 and float(st["losses/approx_kl"]) > cfg.target_kl:
                stop = True
                break
        if stop:
            break
    new_lagrange = min(cfg.lagrange_max, ppo.lagrange_update(lagrange, excess,
                                                             lr=cfg.lagrange_lr))
    stats = {**{k: float(np.mean(v)) for k, v in acc.items()},
             **_episode_charts(ro.episodes, ro.steps // len(runs)),
             "charts/return": float(rewards.sum(0).mean()),
             "charts/shield_lifts": float(ro.lifts.mean()), "charts/excess": excess,
             "charts/teacher_worst_window": ref_worst, "pipeline": Path(sc.pipeline).stem,
             **_joined(drawn), "duration_s": sc.duration_s}
    return stats, ro.steps, new_lagrange


def _constraint(agent, cfg: TrainConfig, ro: Rollout, runs: list[EnvRun], *, dag,
                duration_s: float) -> tuple[torch.Tensor, float, float]:
    """The SLO overrun the reward prices, per tick and rollout ``(T, K)``; the constraint's
    value for the multiplier (without ``cfg.reference``, the rollouts' mean worst window over
    ``1 + slo_target``; with it, the mean of what each rollout's worst window exceeds that or
    the teacher's worst window on the same scenario, whichever is higher, less
    ``excess_allowance``); the teacher's mean worst window (NaN without a reference)."""
    bound = 1.0 + cfg.slo_target
    worst = np.array([e.worst_window for e in ro.episodes])
    if not cfg.reference:
        return ro.overrun, float(np.mean(worst - bound)), math.nan
    ref = collect(agent, dag=dag, runs=runs[::cfg.envs], duration_s=duration_s, mode="teacher",
                  teacher=cfg.teacher, guards=cfg.guards)
    ref_worst = np.repeat([e.worst_window for e in ref.episodes], cfg.envs)
    over = (ro.overrun - ref.overrun.repeat_interleave(cfg.envs, dim=1)).clamp(min=0.0)
    return (over, excess_over(worst, ref_worst, bound=bound, allowance=cfg.excess_allowance),
            float(np.mean(ref_worst)))


def excess_over(worst: np.ndarray, ref_worst: np.ndarray, *, bound: float,
                allowance: float) -> float:
    """The multiplier's constraint value with a reference: the mean of what each rollout's
    worst window exceeds ``max(bound, its scenario's teacher)``, less ``allowance`` (a
    rollout below its bound adds nothing: its slack does not buy another's excess)."""
    return float(np.mean(np.maximum(0.0, worst - np.maximum(bound, ref_worst)))) - allowance


def _joined(drawn: list[Scenario]) -> dict[str, str]:
    """The log's trace, seed and rate columns of an update's scenarios, ``+``-separated."""
    return {"trace": "+".join(d.trace for d in drawn),
            "seed": "+".join(str(d.seed) for d in drawn),
            "rate_scale": "+".join(f"{d.rate_scale:.3g}" for d in drawn)}


def _validate(agent, cfg: TrainConfig, *, dags, settings, mode: str) -> list[EpisodeStats]:
    """The validation episodes, request-level: the config's own engine and rate."""
    agent.eval()
    out = []
    for sc in validation_scenarios(list(dags), traces=cfg.traces, seed=cfg.validation_seed,
                                   duration_s=cfg.validation_s):
        out += collect(agent, dag=dags[sc.pipeline], runs=[EnvRun(settings, sc.trace, sc.seed)],
                       duration_s=sc.duration_s, mode=mode, teacher=cfg.teacher,
                       guards=cfg.guards).episodes
    return out


def _score(mine: list[EpisodeStats], ref: list[dict[str, float]], *,
           tolerance: float) -> dict[str, float]:
    """Cost relative to the teacher; feasible: in every scenario no worse than the teacher on
    window violations and drops, and the worst window within ``tolerance`` of the SLO or the
    teacher's, whichever is higher."""
    feasible = all(m.violation_rate <= r["violation_rate"] + 1e-9 and m.dropped <= r["dropped"]
                   and m.worst_window <= max(1.0, r["worst_window"]) + tolerance
                   for m, r in zip(mine, ref, strict=True))
    return {"val/cost_ratio": sum(m.cost for m in mine) / max(sum(r["cost"] for r in ref), 1e-12),
            "val/worst_window": max(m.worst_window for m in mine),
            "val/violation_rate": float(np.mean([m.violation_rate for m in mine])),
            "val/feasible": float(feasible)}


# ---- the loop ------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, out: str | Path, resume: bool = False, progress: bool = True,
          time_limit_s: float | None = None) -> TrainResult:
    """Train (or resume) into ``out``: ``checkpoint.pt`` (resumable), ``best.pt`` (selected
    on validation), ``log.csv``.

    Raises:
        ConfigError: a bad pipeline or config, or ``resume`` without a matching checkpoint.
    """
    from tqdm import tqdm

    from smoelib.pipeline.topology import build_dag
    from smoelib.settings import load_settings
    from smoelib.sim.pipelines import random_pipeline

    out = Path(out)
    settings = load_settings(cfg.config)
    dags = {p: build_dag(p) for p in cfg.pipelines}
    for seed in range(cfg.random_pipelines):
        drawn = random_pipeline(seed, settings=settings)
        dags[drawn.name] = drawn
    sizes = [len(d.experts) for d in dags.values()]
    refs = {p: reference_cost(d, settings) for p, d in dags.items()}
    pcfg = cfg.policy_config(settings)
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    agent = SMoEAgent(pcfg)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.bc_learning_rate)
    state: dict[str, Any] = {"update": 0, "lagrange": cfg.lagrange_init, "env_steps": 0,
                             "best_ratio": math.inf, "teacher_val": []}
    if resume:
        ck = load_checkpoint(ckpt_path, expect=pcfg)
        stored = ck.training.get("train_config") or {}
        # the number of PPO updates may change (a run extended or cut): nothing before the
        # last update depends on it; a field added since the checkpoint has its default
        defaults = TrainConfig().to_dict()
        diff = sorted(k for k, v in cfg.to_dict().items()
                      if stored.get(k, defaults[k]) != v and k != "updates")
        if diff or not stored:
            raise ConfigError([Problem("--resume", f"the checkpoint was trained with other "
                                       f"settings: {', '.join(diff) or 'none stored'}")],
                              source=str(ckpt_path))
        agent, state = ck.agent, dict(ck.training["state"])
        opt = torch.optim.Adam(agent.parameters(), lr=cfg.bc_learning_rate)
        opt.load_state_dict(ck.optimizer)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(out, keep_until=state["update"])
    started = time.perf_counter()

    def save(path: Path = ckpt_path) -> None:
        save_checkpoint(path, agent, optimizer=opt,
                        training={"state": state, "train_config": cfg.to_dict()})

    bar = tqdm(total=cfg.total_updates, initial=state["update"], unit="update",
               disable=not progress)
    history, finished = [], True
    while state["update"] < cfg.total_updates:
        u = state["update"]
        if u < cfg.bc_rounds:
            stats, steps = _bc_round(agent, opt, cfg, update=u, dags=dags, settings=settings,
                                     refs=refs, lagrange=state["lagrange"])
            stats["phase"] = "bc"
        else:
            stats, steps, state["lagrange"] = _ppo_update(
                agent, opt, cfg, update=u, dags=dags, sizes=sizes, settings=settings,
                refs=refs, lagrange=state["lagrange"])
            stats["phase"] = "ppo"
        state["env_steps"] += steps
        state["update"] = u + 1
        done_bc = state["update"] == cfg.bc_rounds
        ppo_done = state["update"] - cfg.bc_rounds
        if cfg.validate_every and (done_bc or (ppo_done > 0 and ppo_done % cfg.validate_every
                                               == 0) or state["update"] == cfg.total_updates):
            if not state["teacher_val"]:
                state["teacher_val"] = [dataclasses.asdict(e) for e in _validate(
                    agent, cfg, dags=dags, settings=settings, mode="teacher")]
            score = _score(_validate(agent, cfg, dags=dags, settings=settings, mode="greedy"),
                           state["teacher_val"], tolerance=cfg.validation_tolerance)
            stats.update(score)
            if score["val/feasible"] and score["val/cost_ratio"] < state["best_ratio"]:
                state["best_ratio"] = score["val/cost_ratio"]
                save_checkpoint(best_path, agent, training={
                    "update": state["update"], "cost_ratio": score["val/cost_ratio"],
                    "train_config": cfg.to_dict()})
        stats.update({"update": u, "env_steps": state["env_steps"], "charts/lagrange":
                      state["lagrange"], "wall_s": log.wall0 + time.perf_counter() - started})
        log.write(stats)
        history.append(stats)
        bar.update(1)
        bar.set_postfix(phase=stats["phase"], cost=f"{stats['charts/episode_cost']:.3f}",
                        lam=f"{state['lagrange']:.2f}")
        over_time = time_limit_s is not None and time.perf_counter() - started > time_limit_s
        if (state["update"] % cfg.checkpoint_every == 0 or done_bc or over_time
                or state["update"] == cfg.total_updates):
            save()
        if over_time and state["update"] < cfg.total_updates:
            finished = False
            break
    bar.close()
    log.close()
    if not ckpt_path.exists():
        save()
    return TrainResult(update=state["update"], finished=finished, checkpoint=ckpt_path,
                       best=best_path if best_path.exists() else None, history=history)
