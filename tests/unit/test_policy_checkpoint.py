"""Checkpoint round trip and every way a checkpoint can be bad."""

from __future__ import annotations

import pickle

import pytest
import torch

from smoelib.errors import ConfigError
from smoelib.policy.agent import SMoEAgent
from smoelib.policy.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from smoelib.policy.config import PolicyConfig

CFG = PolicyConfig(hidden=8, decode_steps=2, seed=3)


def saved(tmp_path, **kw):
    agent = SMoEAgent(CFG)
    return save_checkpoint(tmp_path / "p.pt", agent, **kw), agent


def rewrite(path, change):
    data = torch.load(path, weights_only=True)
    change(data)
    torch.save(data, path)


def test_round_trip_restores_weights_config_and_training_state(tmp_path):
    agent = SMoEAgent(CFG)
    opt = torch.optim.Adam(agent.parameters(), lr=3e-4)
    agent.value_head[2].bias.data.fill_(0.5)
    gen = torch.Generator().manual_seed(9)
    path = save_checkpoint(tmp_path / "sub" / "p.pt", agent, optimizer=opt,
                           training={"step": 12, "lagrange": 3.5}, generator=gen)
    ck = load_checkpoint(path, expect=CFG)
    assert ck.config == CFG
    for (k, v), (k2, v2) in zip(agent.state_dict().items(), ck.agent.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert ck.training == {"step": 12, "lagrange": 3.5}
    opt2 = torch.optim.Adam(ck.agent.parameters(), lr=3e-4)
    opt2.load_state_dict(ck.optimizer)
    resumed = torch.Generator()
    resumed.set_state(ck.generator)
    assert torch.equal(torch.rand(3, generator=resumed), torch.rand(3, generator=gen))


def test_a_saved_checkpoint_is_readable_by_everyone(tmp_path):
    path, _ = saved(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o644


def test_same_seed_same_checkpoint_bytes_of_weights(tmp_path):
    a = load_checkpoint(save_checkpoint(tmp_path / "a.pt", SMoEAgent(CFG))).agent
    b = load_checkpoint(save_checkpoint(tmp_path / "b.pt", SMoEAgent(CFG))).agent
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint file") as e:
        load_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in str(e.value)


def test_truncated_file(tmp_path):
    path, _ = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ConfigError, match="not a readable checkpoint") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "p.pt"
    path.write_text("hello")
    with pytest.raises(ConfigError, match="not a readable checkpoint|not a policy checkpoint"):
        load_checkpoint(path)


class Boom:
    def __reduce__(self):  # would run on unpickling
        return (exec, ("raise SystemExit('executed')",))


def test_a_pickled_object_is_never_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "smoe-policy", "payload": Boom()}, path)
    with pytest.raises(ConfigError, match="never unpickled"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ConfigError):
        load_checkpoint(path)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(format="other"), "not a 'smoe-policy' checkpoint"),
    (lambda d: d.update(format_version=FORMAT_VERSION + 1), "format_version: version 2"),
    (lambda d: d.update(feature_signature="0" * 16), "feature layout"),
    (lambda d: d["config"].update(hidden=-1), "config.hidden|hidden"),
    (lambda d: d["config"].update(colour="red"), "config.colour: unknown field"),
    (lambda d: d["config"].update(hidden="8"), "expected int"),
    (lambda d: d["model"].pop("value_head.0.weight"), "weights do not fit"),
    (lambda d: d.update(model=None), "missing the model weights"),
    (lambda d: d["config"].update(hidden=16), "weights do not fit"),
    (lambda d: d["model"]["value_head.0.weight"].fill_(float("nan")),
     "model.value_head.0.weight: holds NaN or infinite weights"),
    (lambda d: d["model"]["value_head.0.bias"].fill_(float("inf")), "NaN or infinite"),
    (lambda d: d["config"].update(hidden=200_000),
     r"hidden: 200000 is above the largest this sMoE builds \(1024\)"),
])
def test_bad_contents(tmp_path, change, message):
    path, _ = saved(tmp_path)
    rewrite(path, change)
    with pytest.raises(ConfigError, match=message) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_a_checkpoint_for_another_config(tmp_path):
    path, _ = saved(tmp_path)
    with pytest.raises(ConfigError, match="differs from the expected config in: hidden"):
        load_checkpoint(path, expect=PolicyConfig(hidden=16, decode_steps=2, seed=3))


def _settings(checkpoint="", pretrained=""):
    import dataclasses

    from smoelib.settings import load_settings

    s = load_settings(None)
    return dataclasses.replace(s, policy=dataclasses.replace(s.policy, checkpoint=checkpoint,
                                                             pretrained=pretrained))


def test_the_registry_builds_a_decider_from_a_checkpoint(tmp_path):
    from smoelib.policy.base import available, default_guards, get_decider
    from smoelib.topology import build_dag

    assert {"smoe", "smoe-mlp", "smoe-independent", "smoe-unshielded"} <= set(available())
    # the shield's ablation: the smoe architecture without the shield, by name
    assert default_guards("smoe") == "production"
    assert default_guards("smoe-unshielded") == "unshielded"
    path, _ = saved(tmp_path)
    dag = build_dag({"name": "p", "slo_ms": 50, "stages": [{"id": "a"}, {"id": "m",
                                                                        "experts": 3}]})
    decider = get_decider("smoe", dag=dag, settings=_settings(str(path)))
    assert decider.agent.config == CFG
    with pytest.raises(ConfigError, match="holds a 'smoe' policy, not 'smoe-mlp'"):
        get_decider("smoe-mlp", dag=dag, settings=_settings(str(path)))
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        get_decider("smoe", dag=dag, settings=_settings(str(tmp_path / "missing.pt")))


def test_the_registry_reads_each_architecture_from_the_pretrained_folder(tmp_path):
    from smoelib.policy.base import get_decider
    from smoelib.topology import build_dag

    dag = build_dag({"name": "p", "slo_ms": 50, "stages": [{"id": "a"}, {"id": "m",
                                                                        "experts": 3}]})
    for name, arch, file in (("smoe", "smoe", "default.pt"),
                             ("smoe-mlp", "smoe-mlp", "smoe-mlp.pt"),
                             ("smoe-unshielded", "smoe", "smoe-unshielded.pt")):
        cfg = PolicyConfig(hidden=8, decode_steps=2, seed=3, architecture=arch)
        save_checkpoint(tmp_path / file, SMoEAgent(cfg))
        decider = get_decider(name, dag=dag, settings=_settings(pretrained=str(tmp_path)))
        assert decider.agent.config == cfg
    with pytest.raises(ConfigError, match="policy.pretrained: 'smoe-independent' needs a "
                                          "trained checkpoint and policy.pretrained has no "
                                          "smoe-independent.pt") as e:
        get_decider("smoe-independent", dag=dag, settings=_settings(pretrained=str(tmp_path)))
    assert str(tmp_path) in str(e.value)


def test_a_bad_checkpoint_is_one_line_and_exit_2_from_the_cli(tmp_path, capsys):
    """A NaN checkpoint used to be accepted (every expert at 0 replicas, 84 % dropped); a
    hidden of 200,000 ended in a traceback trying to allocate 480 GB."""
    import yaml

    from smoelib.cli import main

    for change in (lambda d: d["model"]["value_head.0.weight"].fill_(float("nan")),
                   lambda d: d["config"].update(hidden=200_000)):
        path, _ = saved(tmp_path)
        rewrite(path, change)
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"policy": {"checkpoint": str(path)}}))
        code = main(["simulate", "--pipeline", "examples/pipelines/bert-moe.yml", "--policy",
                     "smoe", "--config", str(config), "--duration", "10", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {path}: ")
