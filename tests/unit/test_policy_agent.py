"""Features, decoder and agent on small hand-written pipelines: shapes, masks, capacity,
scoring and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smoelib.core.observation import NODE_FIELDS, Observation
from smoelib.policy.agent import SMoEAgent, actions_to_decision
from smoelib.policy.config import PolicyConfig
from smoelib.policy.decider import SMoEDecider
from smoelib.policy.features import (
    FEATURE_NAMES,
    LOOKAHEAD_FEATURES,
    build_features,
    collate,
    feature_signature,
)
from smoelib.policy.heads import clip_and_mask, sample
from smoelib.topology import build_dag

SMALL = {"name": "p", "slo_ms": 50, "stages": [{"id": "a"}, {"id": "m", "experts": 3},
                                               {"id": "b", "experts": 2}, {"id": "z"}]}
TINY = dict(hidden=8, decode_steps=2)


@pytest.fixture(scope="module")
def dag():
    return build_dag(SMALL)


def observation(dag, seed=0, *, replicas=None):
    rng = np.random.default_rng(seed)
    n = len(dag.nodes)
    arrays = {f: rng.uniform(0.0, 4.0, n) for f in NODE_FIELDS}
    arrays["replicas_desired"] = (np.full(n, float(replicas)) if replicas is not None
                                  else rng.integers(0, 4, n).astype(float))
    arrays["latency_p95_ms"][0] = np.nan
    return Observation(time_s=12.0, nodes=dag.nodes, request_rate=5.0, p95_ms=40.0,
                       p99_ms=60.0, **arrays)


def features(dag, config, seed=0, gpus=8.0, **kw):
    return build_features(observation(dag, seed, **kw), dag, config=config, gpus=gpus)[0]


@pytest.mark.parametrize("replicas, allowed", [
    (3, lambda d: 0 <= 3 + d <= 16),  # in bounds: every choice that stays within [0, 16]
    (40, lambda d: d == -8),  # far above the maximum: only the largest step down
    (17, lambda d: -17 <= d <= -1)])  # one above it: every step that lands within bounds
def test_the_replica_mask_keeps_the_choices_in_bounds_else_the_nearest(dag, replicas, allowed):
    cfg = PolicyConfig(**TINY)
    mask = features(dag, cfg, replicas=replicas).choice_mask  # (1, L, E, heads, C)
    deltas = cfg.choices("replicas")
    row = mask[0, :, :, cfg.heads.index("replicas"), :len(deltas)]  # (L, E, C)
    want = torch.tensor([allowed(d) for d in deltas])
    valid = features(dag, cfg).expert_valid
    assert (row[valid] == want).all()


def test_feature_shapes(dag):
    cfg = PolicyConfig(**TINY)
    inp = features(dag, cfg)
    n, layers, width = len(dag.nodes), len(dag.moe_layers), 3
    assert inp.x.shape == (1, n, len(FEATURE_NAMES)) and torch.isfinite(inp.x).all()
    assert inp.expert_index.shape == (layers, width)
    assert inp.expert_valid.tolist() == [[True, True, True], [True, True, False]]
    assert inp.replicas.shape == (1, layers, width) and inp.budget.shape == (1, layers)
    assert inp.choice_mask.shape == (1, layers, width, len(cfg.heads), cfg.max_choices)
    assert inp.choice_mask.any(-1).all()  # every head keeps a choice, padding included
    both = collate([inp, features(dag, cfg, seed=1)])
    assert both.x.shape[0] == 2 and both.choice_mask.shape[0] == 2


def test_heads_follow_the_gpu_sharing_mode():
    assert "gpu_share" in PolicyConfig(gpu_sharing="mps-env").heads
    assert "gpu_share" not in PolicyConfig(gpu_sharing="mps-device-plugin").heads
    assert "gpu_share" not in PolicyConfig(gpu_sharing="none").heads
    assert feature_signature(PolicyConfig()) != feature_signature(PolicyConfig(gpu_sharing="none"))


def test_trend_state_carries_between_ticks(dag):
    cfg = PolicyConfig(**TINY)
    first, trend = build_features(observation(dag, 0), dag, config=cfg, gpus=8)
    i = FEATURE_NAMES.index("trend_short")
    assert (first.x[0, :, i] == 0).all()  # the first tick starts the trends at the load
    second, _ = build_features(observation(dag, 1), dag, config=cfg, gpus=8, trend=trend)
    assert (second.x[0, :, i] != 0).any()


@pytest.mark.parametrize("arch", ["smoe", "smoe-mlp", "smoe-independent"])
@pytest.mark.parametrize("sharing", ["mps-env", "mps-device-plugin", "none"])
def test_agent_shapes_and_rescoring(dag, arch, sharing):
    cfg = PolicyConfig(architecture=arch, gpu_sharing=sharing, **TINY)
    agent = SMoEAgent(cfg)
    inp = collate([features(dag, cfg, 0), features(dag, cfg, 1)])
    out = agent(inp, generator=torch.Generator().manual_seed(1))
    assert out.actions.choices.shape == (2, 2, 3, len(cfg.heads))
    assert out.log_prob.shape == out.entropy.shape == out.value.shape == (2,)
    assert torch.isfinite(out.log_prob).all() and (out.entropy > 0).all()
    again = agent(inp, actions=out.actions)  # teacher-forced: the same log-probabilities
    assert torch.allclose(again.log_prob, out.log_prob, atol=1e-5)
    # per expert slot: the same log-probability split by expert, nothing on padding
    assert again.slot_log_prob.shape == (2, 2, 3)
    assert torch.allclose(again.slot_log_prob.sum((1, 2)), again.log_prob, atol=1e-5)
    assert (again.slot_log_prob[:, ~inp.expert_valid] == 0).all()
    assert (again.slot_log_prob[:, inp.expert_valid] < 0).all()
    again.log_prob.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in agent.parameters() if p.grad is not None)
    order = out.actions.order[:, 0, :3].sort(-1).values  # layer m: a permutation of 0..2
    assert order.tolist() == [[0, 1, 2], [0, 1, 2]]


def test_a_masked_choice_is_never_sampled():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([5.0, 0.1, -0.1, 0.0]).repeat(20000, 1)
    mask = torch.tensor([False, True, True, False])
    scores = clip_and_mask(logits, mask, 10.0)
    picks = sample(scores, gen)
    assert set(picks.tolist()) == {1, 2}  # the masked favourite never, both allowed ones
    p1 = torch.softmax(scores[0], -1)[1].item()
    assert (picks == 1).float().mean().item() == pytest.approx(p1, abs=0.02)


def test_decoded_actions_respect_bounds_and_masks(dag):
    cfg = PolicyConfig(**TINY)
    agent = SMoEAgent(cfg)
    inp = features(dag, cfg, replicas=0)
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        choices = agent(inp, generator=gen).actions.choices  # (1, L, E, heads)
        allowed = inp.choice_mask.gather(-1, choices.unsqueeze(-1)).squeeze(-1)
        assert allowed[0][inp.expert_valid].all()
        decision = actions_to_decision(agent(inp, generator=gen).actions, inp, dag, config=cfg,
                                       updated_at=1.0)
        for node, d in decision.experts.items():
            spec = dag.spec(node)
            assert spec.replicas_min <= d.replicas <= min(spec.replicas_max, cfg.max_replica_step)
            assert d.gpu_share in cfg.gpu_share_choices and d.cpu in cfg.cpu_choices
        assert set(decision.experts) == set(dag.experts)


def test_the_gpu_budget_caps_what_a_layer_takes(dag):
    cfg = PolicyConfig(**TINY)
    agent = SMoEAgent(cfg)
    # a cluster whose segments already hold every GPU but 0.6: each layer gets 0.3 GPU
    obs = observation(dag, replicas=1)
    seg_gpu = sum(obs.gpu_share[i] for i, n in enumerate(dag.nodes) if n not in dag.experts)
    inp = build_features(obs, dag, config=cfg, gpus=seg_gpu + 0.6)[0]
    gen = torch.Generator().manual_seed(3)
    deltas, shares = torch.tensor(cfg.choices("replicas")), torch.tensor(cfg.gpu_share_choices)
    for _ in range(30):
        c = agent(inp, generator=gen).actions.choices[0]  # (L, E, heads)
        target = (inp.replicas[0] + deltas[c[..., 0]]).clamp_min(0)
        used = (target * shares[c[..., 1]] * inp.expert_valid).sum(-1)  # (L,)
        smallest = (inp.replicas[0] - cfg.max_replica_step).clamp_min(0) * shares[0]
        # within budget, unless even the smallest choices do not fit
        assert (used <= torch.maximum(inp.budget[0], (smallest * inp.expert_valid).sum(-1))
                + 1e-5).all()


def _with_configs(obs, dag, shares):
    """``obs`` with one replica of every node and the given GPU share per expert."""
    import dataclasses

    n = len(dag.nodes)
    share = np.array([shares.get(v, 0.1) if v in dag.experts else 0.0 for v in dag.nodes])
    return dataclasses.replace(obs, replicas_desired=np.ones(n), replicas_ready=np.ones(n),
                               gpu_share=share)


def test_spare_capacity_budgets_follow_the_current_use(dag):
    # layer m (3 experts) uses 0.5 + 0.1 + 0.1 = 0.7 GPU, layer b (2 experts) 0.2; 5 GPUs
    # for experts leave 4.1 spare, shared 3:2 by expert count
    obs = _with_configs(observation(dag), dag, {"m/e0": 0.5})
    spare = build_features(obs, dag, config=PolicyConfig(capacity="spare", **TINY), gpus=5.0)[0]
    assert spare.budget[0].tolist() == pytest.approx([0.7 + 4.1 * 3 / 5, 0.2 + 4.1 * 2 / 5])
    even = build_features(obs, dag, config=PolicyConfig(**TINY), gpus=5.0)[0]
    assert even.budget[0].tolist() == pytest.approx([5.0 * 3 / 5, 5.0 * 2 / 5])
    # over capacity, a layer keeps what it uses and nothing more
    full = build_features(obs, dag, config=PolicyConfig(capacity="spare", **TINY), gpus=0.5)[0]
    assert full.budget[0].tolist() == pytest.approx([0.7, 0.2])


def test_spare_capacity_lets_one_expert_of_a_block_take_the_rest_of_its_layer(dag):
    # one hot expert asks for 4 replicas at share 0.5 (2 GPUs) of a 3-GPU layer budget: more
    # than the even split of a 2-expert block allows (1.5), within what spare allows (3)
    obs = _with_configs(observation(dag), dag, {})
    labels = {}
    for mode in ("even", "spare"):
        cfg = PolicyConfig(capacity=mode, **TINY)
        agent = SMoEAgent(cfg)
        inp = build_features(obs, dag, config=cfg, gpus=5.0)[0]
        inp = inp._replace(budget=torch.tensor([[3.0, 2.0]]))
        greedy = agent(inp).actions
        choices = greedy.choices.clone()
        hot = int(greedy.order[0, 0, 0])  # the first expert decoded in layer m
        choices[0, 0, hot, 0] = cfg.choices("replicas").index(3)  # 1 -> 4 replicas
        choices[0, 0, hot, 1] = cfg.gpu_share_choices.index(0.5)
        for j in range(3):  # every other expert of layer m at 1 replica, share 0.1
            if j != hot:
                choices[0, 0, j, :2] = torch.tensor([cfg.choices("replicas").index(0), 0])
        labels[mode] = agent(inp, actions=greedy._replace(choices=choices)).log_prob.item()
    assert labels["even"] < -1e4 < labels["spare"]  # masked with even, allowed with spare


def test_same_seed_same_parameters_and_actions(dag):
    cfg = PolicyConfig(seed=7, **TINY)
    a, b = SMoEAgent(cfg), SMoEAgent(cfg)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    inp = features(dag, cfg)
    out_a = a(inp, generator=torch.Generator().manual_seed(5))
    out_b = b(inp, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out_a.actions.choices, out_b.actions.choices)
    assert torch.equal(out_a.actions.order, out_b.actions.order)
    assert torch.equal(out_a.log_prob, out_b.log_prob)
    other = SMoEAgent(PolicyConfig(seed=8, **TINY))
    assert not torch.equal(other.decoder.init_state.weight, a.decoder.init_state.weight)


def test_decider_runs_ticks_deterministically(dag):
    agent = SMoEAgent(PolicyConfig(**TINY))
    decider = SMoEDecider(dag=dag, agent=agent, gpus=8.0, sample=True)
    runs = []
    for _ in range(2):
        decider.reset(seed=11)
        runs.append([decider.decide(observation(dag, s)) for s in range(3)])
    assert runs[0] == runs[1]
    assert runs[0][0].pipeline == "p" and runs[0][0].updated_at == 12.0


def test_a_decision_holds_the_dags_own_expert_ids(dag):
    # the guards find a decision's experts by identity (15,000 ids a tick at deepseek-v3 size)
    cfg = PolicyConfig(**TINY)
    inp, _ = build_features(observation(dag, 0), dag, config=cfg, gpus=8.0)
    with torch.inference_mode():
        actions = SMoEAgent(cfg)(inp, score=False).actions
    decision = actions_to_decision(actions, inp, dag, config=cfg, updated_at=1.0)
    assert decision.experts.nodes is dag.experts


def test_compiled_greedy_decider_decides_as_the_eager_agent(dag):
    # one architecture: the compiled path is the same wrapper for all three, and a compile
    # costs tens of seconds here
    cfg = PolicyConfig(**TINY)
    agent = SMoEAgent(cfg)
    decider = SMoEDecider(dag=dag, agent=agent, gpus=8.0, compile=True)
    decisions = [decider.decide(observation(dag, 0))]  # eager while it compiles
    assert decider.wait_compiled(timeout=600)  # this machine compiles the path
    decisions += [decider.decide(observation(dag, s)) for s in range(1, 4)]
    trend = None
    for s, got in enumerate(decisions):
        inp, trend = build_features(observation(dag, s), dag, config=cfg, gpus=8.0, trend=trend)
        with torch.inference_mode():
            eager = agent(inp, score=False).actions
        assert got == actions_to_decision(eager, inp, dag, config=cfg, updated_at=12.0)


def test_compiled_greedy_decider_follows_the_agents_parameters(dag):
    cfg = PolicyConfig(**TINY)
    agent, other = SMoEAgent(cfg), SMoEAgent(PolicyConfig(seed=3, **TINY))
    decider = SMoEDecider(dag=dag, agent=agent, gpus=8.0, compile=True)
    _, trend = build_features(observation(dag, 0), dag, config=cfg, gpus=8.0)
    decider.decide(observation(dag, 0))  # compiled from here
    assert decider.wait_compiled(timeout=600)
    inp, _ = build_features(observation(dag, 1), dag, config=cfg, gpus=8.0, trend=trend)
    with torch.inference_mode():
        before = actions_to_decision(agent(inp, score=False).actions, inp, dag, config=cfg,
                                     updated_at=12.0)
        agent.load_state_dict(other.state_dict())  # in place, as a training step would
        after = actions_to_decision(other(inp, score=False).actions, inp, dag, config=cfg,
                                    updated_at=12.0)
    assert before != after  # the two agents disagree on this tick
    assert decider.decide(observation(dag, 1)) == after


def test_a_machine_that_cannot_compile_decides_on_the_eager_path(dag, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", refuse)
    cfg = PolicyConfig(**TINY)
    agent = SMoEAgent(cfg)
    decider = SMoEDecider(dag=dag, agent=agent, gpus=8.0, compile=True)
    got = decider.decide(observation(dag, 0))
    assert not decider.wait_compiled(timeout=5)
    inp, _ = build_features(observation(dag, 0), dag, config=cfg, gpus=8.0)
    with torch.inference_mode():
        eager = agent(inp, score=False).actions
    assert got == actions_to_decision(eager, inp, dag, config=cfg, updated_at=12.0)
    assert "torch.compile failed (no C++ compiler found)" in caplog.text


# ---- the lookahead features (PolicyConfig.features) ------------------------------------------
def lookahead(dag, obs, trend=None):
    from smoelib.settings import load_settings

    cfg = PolicyConfig(features="lookahead", **TINY)
    inp, nxt = build_features(obs, dag, config=cfg, gpus=8.0, trend=trend,
                              settings=load_settings(None))
    return {n: inp.x[0, :, len(FEATURE_NAMES) + i].numpy()
            for i, n in enumerate(LOOKAHEAD_FEATURES)}, nxt


def test_lookahead_features_extend_the_layout_and_need_the_settings(dag):
    base, more = PolicyConfig(**TINY), PolicyConfig(features="lookahead", **TINY)
    assert feature_signature(base) != feature_signature(more)
    cols, _ = lookahead(dag, observation(dag))
    assert set(cols) == set(LOOKAHEAD_FEATURES)
    with pytest.raises(ValueError, match="lookahead features need the run's settings"):
        build_features(observation(dag), dag, config=more, gpus=8.0)


def test_the_time_since_a_change_counts_from_the_tick_that_saw_it(dag):
    import dataclasses

    first = observation(dag, replicas=2)
    cols, trend = lookahead(dag, first)
    assert (cols["log_s_since_replica_change"] == 1.0).all()  # no change seen yet
    same = dataclasses.replace(first, time_s=27.0)
    cols, trend = lookahead(dag, same, trend)
    assert (cols["log_s_since_replica_change"] == 1.0).all()
    e = dag.nodes.index(dag.experts[0])
    desired = first.replicas_desired.copy()
    desired[e] = 3.0
    moved = dataclasses.replace(first, time_s=42.0, replicas_desired=desired)
    cols, trend = lookahead(dag, moved, trend)
    assert cols["log_s_since_replica_change"][e] == 0.0
    assert cols["log_s_since_knob_change"][e] == 1.0  # only its replicas changed
    later = dataclasses.replace(moved, time_s=57.0)
    cols, _ = lookahead(dag, later, trend)
    assert cols["log_s_since_replica_change"][e] == pytest.approx(np.log1p(15) / np.log1p(600))
    others = np.delete(cols["log_s_since_replica_change"], e)
    assert (others == 1.0).all()


def test_the_layer_popularity_shift_is_the_distance_from_its_long_trend(dag):
    import dataclasses

    obs = observation(dag)
    cols, trend = lookahead(dag, obs)
    assert (cols["layer_popularity_shift"] == 0.0).all()  # the trend starts at the shares
    tokens = obs.tokens_per_s.copy()
    layer = [dag.nodes.index(n) for n in dag.moe_layers["b"]]
    tokens[layer] = [10.0, 0.0]  # layer b: everything to its first expert
    cols, _ = lookahead(dag, dataclasses.replace(obs, time_s=27.0, tokens_per_s=tokens), trend)
    before = obs.tokens_per_s[layer] / obs.tokens_per_s[layer].sum()
    assert cols["layer_popularity_shift"][layer] == pytest.approx(abs(1.0 - before[0]))
    assert (cols["layer_popularity_shift"][[dag.nodes.index(n) for n in dag.moe_layers["m"]]]
            == 0.0).all()  # layer m kept its shares
    assert cols["layer_popularity_shift"][dag.nodes.index("a")] == 0.0


def test_the_load_against_the_shield_bound_is_where_the_shield_lifts(dag):
    import dataclasses
    from types import SimpleNamespace

    from smoelib.core.guards import observed_decision
    from smoelib.core.shield import shield
    from smoelib.settings import load_settings

    n = len(dag.nodes)
    obs = observation(dag, replicas=1)
    scale = np.zeros(n)
    for k, e in enumerate(dag.experts):  # calls from none to far past the bound
        scale[dag.nodes.index(e)] = 0.0 if k == 0 else 10.0 ** k
    obs = dataclasses.replace(  # whole-number knobs, as a cluster reports them
        obs, calls_per_s=obs.calls_per_s * scale, tokens_per_s=obs.calls_per_s * scale * 32.0,
        cpu=np.full(n, 1.0), memory_mb=np.full(n, 2048.0), gpu_share=np.full(n, 0.25),
        concurrency=np.full(n, 4.0))
    u = lookahead(dag, obs)[0]["load_vs_shield_bound"]
    at = {e: dag.nodes.index(e) for e in dag.experts}
    assert u[dag.nodes.index("a")] == 0.0 and u[at[dag.experts[0]]] == 0.0
    assert (u > 1.0).any() and ((u > 0.0) & (u < 1.0)).any()
    # the shield, given the observed configuration, lifts exactly those over 1
    texts = []
    table, _ = shield(observed_decision(obs, dag), observation=obs, dag=dag,
                      settings=load_settings(None), memory=None,
                      notes=SimpleNamespace(add=lambda rule, text: texts.append(text)))
    lifted = {e for e in dag.experts if table[e].replicas > 1}
    assert lifted == {e for e, i in at.items() if u[i] > 1.0}, (u, texts)
