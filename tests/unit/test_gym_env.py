"""The simulated cluster is a Gymnasium environment: it passes gymnasium's own checker, its
vector form steps N episodes together, and a seed gives one trajectory."""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium.utils.env_checker import check_env

from smoelib.sim.gymenv import ENV_ID, ClusterEnv, make_vector
from smoelib.topology import build_dag


def tiny():
    seg = {"replicas": {"min": 1, "max": 3}, "concurrency": 8, "gpu_share": 0.25,
           "profile": {"base_ms": 1.0, "per_token_ms": 0.01}}
    return build_dag({
        "name": "t", "kind": "decoder", "slo": {"ttft_ms": 200, "tpot_ms": 40},
        "max_seq_tokens": 1024, "decode_cap": 8,
        "defaults": {"segment": seg, "expert": seg},
        "stages": [{"id": "embed"}, {"id": "moe", "kind": "moe", "experts": 4, "top_k": 2},
                   {"id": "head"}]})


def test_the_environment_passes_gymnasiums_checker():
    env = ClusterEnv(tiny(), trace="poisson", duration_s=60.0, rate_scale=0.5)
    check_env(env, skip_render_check=True)
    assert env.action_space.shape == (4 * 5,)


def test_a_seed_gives_one_trajectory_and_the_episode_ends_by_truncation():
    runs = []
    for _ in range(2):
        env = ClusterEnv(tiny(), trace="poisson", duration_s=40.0, rate_scale=0.5)
        obs, _ = env.reset(seed=3)
        env.action_space.seed(3)
        total, truncated, steps = 0.0, False, 0
        while not truncated:
            obs, r, terminated, truncated, info = env.step(env.action_space.sample())
            assert not terminated and np.isfinite(r) and env.observation_space.contains(obs)
            total += r
            steps += 1
        runs.append((total, obs))
    assert steps == round(40.0 / env.settings.control.interval_s) and runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_the_vector_form_steps_episodes_together():
    venv = make_vector(tiny(), 3, trace="poisson", duration_s=20.0, rate_scale=0.5)
    obs, _ = venv.reset(seed=[1, 2, 3])
    assert obs.shape == (3, venv.single_observation_space.shape[0])
    obs, rewards, _, truncated, _ = venv.step(venv.action_space.sample())
    assert rewards.shape == (3,) and not truncated.any()
    venv.close()
    env = gymnasium.make(ENV_ID, pipeline=tiny(), trace="poisson", duration_s=20.0)
    assert isinstance(env.unwrapped, ClusterEnv)


def test_the_vector_form_mixes_scenarios_in_the_fast_mode():
    from smoelib.settings import load_settings

    fluid = load_settings({"simulator": {"engine": "fluid"}})
    scenarios = [{"trace": "poisson"}, {"trace": "bursty", "rate_scale": 1.5}]
    runs = []
    for _ in range(2):
        venv = make_vector(tiny(), 4, trace="poisson", duration_s=30.0, rate_scale=0.5,
                           settings=fluid, scenarios=scenarios)
        assert [e.sim.trace_name for e in venv.envs] == ["poisson", "bursty"] * 2
        obs, _ = venv.reset(seed=[1, 2, 3, 4])
        venv.action_space.seed(7)
        total = np.zeros(4)
        for _ in range(4):
            obs, rewards, _, _, _ = venv.step(venv.action_space.sample())
            total += rewards
        runs.append((total, obs))
        venv.close()
    np.testing.assert_array_equal(runs[0][0], runs[1][0])  # one seed, one trajectory each
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert np.isfinite(runs[0][0]).all()
