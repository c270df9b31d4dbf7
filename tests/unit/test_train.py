"""Training pieces: the data split, the CRN baseline, teacher labels, behaviour cloning, the
curriculum, and whole tiny runs (same seed, same checkpoint; a resumed run as an uninterrupted
one)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.observation import NODE_FIELDS, Observation
from smoelib.errors import ConfigError
from smoelib.policy.agent import SMoEAgent, actions_to_decision
from smoelib.policy.config import PolicyConfig
from smoelib.policy.curriculum import scenarios
from smoelib.policy.features import build_features, collate
from smoelib.policy.imitation import bc_loss, teacher_actions
from smoelib.policy.train import TrainConfig, crn_advantages, excess_over, train
from smoelib.topology import build_dag

SMALL = {"name": "p", "slo_ms": 50, "stages": [{"id": "a"}, {"id": "m", "experts": 3},
                                               {"id": "b", "experts": 2}, {"id": "z"}]}


@pytest.fixture(scope="module")
def dag():
    return build_dag(SMALL)


@pytest.fixture
def small_yml(tmp_path):
    path = tmp_path / "small.yml"
    path.write_text(yaml.safe_dump(SMALL))
    return str(path)


def observation(dag, seed=0, replicas=2.0):
    rng = np.random.default_rng(seed)
    n = len(dag.nodes)
    arrays = {f: rng.uniform(0.0, 4.0, n) for f in NODE_FIELDS}
    arrays["replicas_desired"] = np.full(n, replicas)
    return Observation(time_s=10.0, nodes=dag.nodes, request_rate=5.0, p95_ms=30.0,
                       p99_ms=40.0, **arrays)


def decision(dag, seed=0):
    rng = np.random.default_rng(seed)
    return PipelineDecision(pipeline=dag.name, updated_at=10.0, experts={
        e: ExpertDecision(replicas=int(rng.integers(0, 5)), cpu=float(rng.choice([0.5, 1.0])),
                          memory_mb=int(rng.choice([1024, 2048])),
                          gpu_share=float(rng.choice([0.1, 0.25])),
                          concurrency=int(rng.choice([1, 4, 16])))
        for e in dag.experts})


# ---- the data split ------------------------------------------------------------------------
@pytest.mark.parametrize("kw, needle", [
    ({"traces": ("conv-eval",)}, "conv-eval"), ({"traces": ("conv",)}, "'conv'"),
    ({"traces": ("data/x.csv",)}, "x.csv"), ({"seeds": (0, 1001)}, "evaluation split"),
    ({"validation_seed": 1000}, "validation_seed")])
def test_evaluation_data_is_refused(kw, needle):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**kw)
    assert needle in str(e.value)


@pytest.mark.parametrize("kw, needle", [
    ({"engine": "warp"}, "engine: unknown engine 'warp'"),
    ({"rate_scales": (2.0, 1.0)}, "rate_scales: needs 0 < lo <= hi"),
    ({"rate_scales": (0.0, 1.0)}, "rate_scales"), ({"scenarios": 0}, "scenarios: must be >= 1"),
    ({"random_pipelines": 1001}, "random_pipelines: must be 0-1000"),
    ({"shield_penalty": -1.0}, "shield_penalty: must be >= 0"),
    ({"shield_penalty": float("nan")}, "shield_penalty: must be >= 0")])
def test_bad_training_settings_are_named(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        TrainConfig(**kw)


def test_the_default_budget_is_the_issue_s():
    """Point 6 of the policy issue: at least 16 environments per update and 300,000 control
    ticks of experience (the curriculum's episode lengths summed), in the fast mode."""
    cfg = TrainConfig()
    assert cfg.scenarios * cfg.envs >= 16 and cfg.engine == "fluid"
    from smoelib.policy.curriculum import _episode_s

    ticks = sum(cfg.scenarios * cfg.envs * _episode_s(
        u, start_s=cfg.episode_start_s, end_s=cfg.episode_s, ramp=cfg.curriculum_updates,
        tick_s=5.0) / 5.0 for u in range(cfg.updates))
    assert ticks >= 300_000


def test_the_capacity_mode_reaches_the_network_and_is_checked():
    from smoelib.settings import load_settings

    assert TrainConfig(capacity="spare").policy_config(load_settings(None)).capacity == "spare"
    with pytest.raises(ConfigError, match="capacity: one of even, spare"):
        TrainConfig(capacity="greedy")


# ---- maths ---------------------------------------------------------------------------------
def test_crn_advantages_subtract_the_other_rollouts_mean():
    adv = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    # row 0: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5
    want = torch.tensor([[-3.0, -1.5, 4.5], [-1.5, -1.5, 3.0]])
    assert torch.allclose(crn_advantages(adv), want)
    shared = torch.tensor([[5.0, 5.0], [-2.0, -2.0]])  # what every rollout shares cancels
    assert torch.equal(crn_advantages(shared), torch.zeros(2, 2))
    # two scenarios side by side (columns scenario-major): each its own baseline
    both = torch.cat([adv, adv + 100.0], dim=1)
    assert torch.allclose(crn_advantages(both, group=3), torch.cat([want, want], dim=1))


def test_validation_feasibility_allows_the_tolerance_and_nothing_more():
    from smoelib.policy.rollout import EpisodeStats
    from smoelib.policy.train import _score

    teacher = [dict(cost=1.0, slo_ratio=1.2, worst_window=1.34, violation_rate=0.2, dropped=0),
               dict(cost=2.0, slo_ratio=0.6, worst_window=0.60, violation_rate=0.0, dropped=0)]

    def mine(worst0, worst1=0.7, viol=0.2, dropped=0):
        return [EpisodeStats(0.9, 1.2, worst0, viol, dropped), EpisodeStats(1.5, 0.6, worst1,
                                                                            0.0, 0)]

    ok = _score(mine(1.352), teacher, tolerance=0.02)
    assert ok["val/feasible"] == 1.0 and ok["val/cost_ratio"] == pytest.approx(2.4 / 3.0)
    assert _score(mine(1.352), teacher, tolerance=0.0)["val/feasible"] == 0.0
    assert _score(mine(1.37), teacher, tolerance=0.02)["val/feasible"] == 0.0
    assert _score(mine(1.3, worst1=1.01), teacher, tolerance=0.02)["val/feasible"] == 1.0
    assert _score(mine(1.3, worst1=1.03), teacher, tolerance=0.02)["val/feasible"] == 0.0
    assert _score(mine(1.3, viol=0.4), teacher, tolerance=0.02)["val/feasible"] == 0.0
    assert _score(mine(1.3, dropped=1), teacher, tolerance=0.02)["val/feasible"] == 0.0


def test_the_constraint_counts_only_the_excess_over_the_teacher():
    worst = np.array([0.53, 0.53, 1.70, 1.20])
    teacher = np.array([0.53, 0.53, 1.60, 0.95])
    # easy scenarios add nothing; 1.70 - 1.60 and 1.20 - 0.95 count
    assert excess_over(worst, teacher, bound=0.9, allowance=0.0) == pytest.approx(0.35 / 4)
    assert excess_over(worst, teacher, bound=0.9, allowance=0.02) == pytest.approx(0.35 / 4
                                                                                 - 0.02)
    # as safe as the teacher everywhere: the multiplier falls by the allowance
    assert excess_over(teacher, teacher, bound=0.9, allowance=0.02) == pytest.approx(-0.02)


@pytest.mark.parametrize("architecture", ["smoe", "smoe-independent"])
def test_teacher_labels_reproduce_the_teacher_decision(dag, architecture):
    cfg = PolicyConfig(hidden=8, decode_steps=2, architecture=architecture)
    inp, _ = build_features(observation(dag), dag, config=cfg, gpus=64.0)
    want = decision(dag)
    acts = teacher_actions(want, inp, dag, config=cfg)
    got = actions_to_decision(acts, inp, dag, config=cfg, updated_at=10.0)
    assert dict(got.experts) == dict(want.experts)
    with torch.no_grad():  # the decoder scores them: finite, allowed
        out = SMoEAgent(cfg)(inp, actions=acts)
    assert torch.isfinite(out.log_prob).all() and float(out.log_prob[0]) > -1e4
    # the order decodes the biggest GPU users first (pointer) and is a permutation
    for li, experts in enumerate(dag.moe_layers.values()):
        order = acts.order[0, li, :len(experts)].tolist()
        assert sorted(order) == list(range(len(experts)))


def test_a_residual_policy_s_changes_are_relative_to_the_plan(dag):
    cfg = PolicyConfig(hidden=8, decode_steps=2, replica_base="queueing")
    obs = observation(dag, replicas=2.0)
    with pytest.raises(ValueError, match="'queueing' plan needs it"):
        build_features(obs, dag, config=cfg, gpus=64.0)
    n = len(dag.nodes)
    plan = np.array([np.nan if node not in dag.experts else 3.0 + (i % 2)
                     for i, node in enumerate(dag.nodes)])
    inp, _ = build_features(obs, dag, config=cfg, gpus=64.0, plan=plan)
    plain, _ = build_features(obs, dag, config=PolicyConfig(hidden=8, decode_steps=2),
                              gpus=64.0)
    assert inp.x.shape[-1] == plain.x.shape[-1] + 2  # the network sees the plan
    slots = [dag.nodes.index(e) for e in dag.moe_layers["m"]]
    assert inp.replicas[0, 0, :3].tolist() == [plan[i] for i in slots]
    # the planner's own decision is the zero change for every expert
    want = PipelineDecision(pipeline=dag.name, updated_at=10.0, experts={
        e: ExpertDecision(replicas=int(plan[dag.nodes.index(e)]), cpu=1.0, memory_mb=2048,
                          gpu_share=0.25, concurrency=4) for e in dag.experts})
    acts = teacher_actions(want, inp, dag, config=cfg)
    zero = cfg.choices("replicas").index(0.0)
    assert (acts.choices[0, ..., 0][inp.expert_valid] == zero).all()
    got = actions_to_decision(acts, inp, dag, config=cfg, updated_at=10.0)
    assert dict(got.experts) == dict(want.experts)
    assert n == len(plan)


def test_bc_loss_decreases_on_a_fixed_batch(dag):
    cfg = PolicyConfig(hidden=16, decode_steps=2)
    agent = SMoEAgent(cfg)
    rows, labels = [], []
    for s in range(8):
        inp, _ = build_features(observation(dag, s), dag, config=cfg, gpus=64.0)
        rows.append(inp)
        labels.append(teacher_actions(decision(dag, s), inp, dag, config=cfg))
    batch = collate(rows)
    acts = type(labels[0])(order=torch.cat([a.order for a in labels]),
                           choices=torch.cat([a.choices for a in labels]))
    opt = torch.optim.Adam(agent.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss, kept = bc_loss(agent(batch, actions=acts).log_prob, len(dag.experts))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert float(kept) == 1.0
    assert losses[-1] < 0.5 * losses[0]


def test_curriculum_is_a_function_of_seed_and_update():
    kw = dict(pipelines=["big", "small"], sizes=[144, 6], traces=("poisson", "spike"),
              seeds=(0, 1000), seed=3, start_s=60.0, end_s=300.0, ramp=10, tick_s=5.0)
    one = lambda u: scenarios(u, **kw)[0]  # noqa: E731
    assert scenarios(4, **kw) == scenarios(4, **kw)
    first = [one(u) for u in range(4)]
    assert all(s.pipeline == "small" for s in first)  # smallest pipeline first
    assert [s.duration_s for s in first] == sorted(s.duration_s for s in first)
    assert first[0].duration_s == 60.0 and one(50).duration_s == 300.0
    assert {one(u).pipeline for u in range(10, 40)} == {"big", "small"}
    assert all(0 <= one(u).seed < 1000 for u in range(40))
    assert {one(u).rate_scale for u in range(40)} == {1.0}
    # several scenarios of an update: one pipeline and length, their own seeds and rates
    many = [scenarios(u, **kw, count=4, rate_scales=(0.3, 3.0)) for u in range(10, 40)]
    assert all(len({(s.pipeline, s.duration_s) for s in m}) == 1 for m in many)
    assert all(len({s.seed for s in m}) > 1 for m in many)
    rates = np.array([s.rate_scale for m in many for s in m])
    assert rates.min() >= 0.3 and rates.max() <= 3.0
    assert (rates < 1).mean() == pytest.approx(0.5, abs=0.2)  # log-uniform: median 0.95


# ---- whole runs ----------------------------------------------------------------------------
def tiny(small_yml, **kw):
    base = dict(pipelines=(small_yml,), traces=("poisson", "bursty"), bc_rounds=1,
                bc_episodes=1, bc_epochs=2, bc_batch=8, updates=2, envs=2,
                episode_start_s=20.0, episode_s=30.0, curriculum_updates=2, update_epochs=2,
                minibatches=2, validate_every=0, validation_s=20.0, checkpoint_every=10)
    base.update(kw)
    return TrainConfig(**base)


def tensors(path):
    data = torch.load(path, weights_only=True)
    return data["model"], data["optimizer"]["state"], data["training"]


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_same_seed_same_checkpoint_and_resume_continues_identically(small_yml, tmp_path):
    cfg = tiny(small_yml)
    a = train(cfg, out=tmp_path / "a", progress=False)
    b = train(cfg, out=tmp_path / "b", progress=False)
    assert a.finished and a.update == 3
    assert same(tensors(a.checkpoint), tensors(b.checkpoint))
    assert [h["phase"] for h in a.history] == ["bc", "ppo", "ppo"]
    # stopped after every update by the time limit, resumed each time: the same checkpoint
    c = train(cfg, out=tmp_path / "c", progress=False, time_limit_s=0.0)
    while not c.finished:
        c = train(cfg, out=tmp_path / "c", progress=False, resume=True, time_limit_s=0.0)
    assert same(tensors(a.checkpoint), tensors(c.checkpoint))
    assert (tmp_path / "c" / "log.csv").read_text().count("\n") == 1 + 3
    other = train(tiny(small_yml, seed=2, updates=0), out=tmp_path / "d", progress=False)
    assert not same(tensors(a.checkpoint)[0], tensors(other.checkpoint)[0])


def test_per_expert_ratios_train_another_policy(small_yml, tmp_path):
    joint = train(tiny(small_yml), out=tmp_path / "j", progress=False)
    expert = train(tiny(small_yml, ratio="expert"), out=tmp_path / "e", progress=False)
    assert expert.finished and expert.update == joint.update
    ppo = [h for h in expert.history if h["phase"] == "ppo"]
    for h in ppo:  # one ratio per expert: the joint KL is the sum of the experts' KLs
        assert np.isfinite(h["losses/policy"]) and h["losses/joint_kl"] >= h["losses/approx_kl"]
    # cloning is the same; PPO's first step already differs
    assert not same(tensors(joint.checkpoint)[0], tensors(expert.checkpoint)[0])
    with pytest.raises(ConfigError, match="ratio: unknown ratio 'agent'"):
        tiny(small_yml, ratio="agent")


def test_a_residual_policy_trains_and_decides_over_the_queueing_plan(small_yml, tmp_path):
    from smoelib.policy.base import get_decider
    from smoelib.policy.checkpoint import load_checkpoint
    from smoelib.settings import load_settings
    from smoelib.sim.env import SimEnv

    run = train(tiny(small_yml, replica_base="queueing"), out=tmp_path, progress=False)
    assert run.finished
    agent = load_checkpoint(run.checkpoint).agent
    assert agent.config.replica_base == "queueing"
    dag = build_dag(SMALL)
    settings = load_settings(None)
    settings = dataclasses.replace(settings, policy=dataclasses.replace(
        settings.policy, checkpoint=str(run.checkpoint)))
    decider = get_decider("smoe", dag=dag, settings=settings)
    assert decider.planner is not None and decider.planner.name == "queueing"
    env = SimEnv(dag, settings, trace="poisson", duration_s=20.0)
    decider.reset(1)
    d = decider.decide(env.reset(seed=1))
    assert set(d.experts) == set(dag.experts)


def test_the_lookahead_features_train_and_decide(small_yml, tmp_path):
    from smoelib.policy.base import get_decider
    from smoelib.policy.checkpoint import load_checkpoint
    from smoelib.policy.features import LOOKAHEAD_FEATURES, feature_names
    from smoelib.settings import load_settings
    from smoelib.sim.env import SimEnv

    run = train(tiny(small_yml, features="lookahead"), out=tmp_path, progress=False)
    assert run.finished
    agent = load_checkpoint(run.checkpoint).agent
    assert feature_names(agent.config)[-len(LOOKAHEAD_FEATURES):] == LOOKAHEAD_FEATURES
    dag = build_dag(SMALL)
    settings = load_settings(None)
    settings = dataclasses.replace(settings, policy=dataclasses.replace(
        settings.policy, checkpoint=str(run.checkpoint)))
    decider = get_decider("smoe", dag=dag, settings=settings)
    env = SimEnv(dag, settings, trace="poisson", duration_s=20.0)
    decider.reset(1)
    obs = env.reset(seed=1)
    assert set(decider.decide(obs).experts) == set(dag.experts)
    assert decider.trend.changed_s is not None  # the ages are carried to the next tick
    with pytest.raises(ConfigError, match="features: one of base, lookahead"):
        tiny(small_yml, features="hindsight")


def test_random_pipelines_join_the_training_pipelines(small_yml, tmp_path):
    run = train(tiny(small_yml, random_pipelines=2, updates=3), out=tmp_path, progress=False)
    assert run.finished
    trained = {h["pipeline"] for h in run.history if h["phase"] == "ppo"}
    assert trained & {"random-0", "random-1"}, trained


def test_resume_refuses_other_settings(small_yml, tmp_path):
    train(tiny(small_yml, updates=0), out=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="bc_episodes"):
        train(tiny(small_yml, updates=0, bc_episodes=2), out=tmp_path, progress=False,
              resume=True)
