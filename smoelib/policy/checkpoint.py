"""Policy checkpoints: the only module of the policy that touches files.

A checkpoint is a ``torch.save`` of a plain dict of primitives and tensors, loaded with
``torch.load(path, weights_only=True)`` (never arbitrary unpickling):

    {"format": "smoe-policy", "format_version": 1, "feature_signature": "<16 hex>",
     "config": PolicyConfig.to_dict(), "model": state_dict, "optimizer": state_dict | None,
     "training": {"step": int, "lagrange": float, ...primitives}, "generator": uint8 tensor | None}

Everything that could be wrong (a missing or truncated file, a foreign pickle, another format
version, a different feature layout, an invalid config or one asking for sizes beyond reason,
NaN or infinite weights, weights that do not fit the config) raises one
:class:`~smoelib.errors.ConfigError` naming the file and the mismatch.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smoelib.errors import ConfigError, Problem
from smoelib.policy.agent import SMoEAgent
from smoelib.policy.config import PolicyConfig
from smoelib.policy.features import feature_signature

__all__ = ["FORMAT", "FORMAT_VERSION", "Checkpoint", "save_checkpoint", "load_checkpoint"]

FORMAT = "smoe-policy"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the agent (weights restored) and what training needs to resume."""

    agent: SMoEAgent
    optimizer: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    generator: torch.Tensor | None = None

    @property
    def config(self) -> PolicyConfig:
        return self.agent.config


def save_checkpoint(path: str | Path, agent: SMoEAgent, *, optimizer: Any = None,
                    training: dict[str, Any] | None = None,
                    generator: torch.Generator | None = None) -> Path:
    """Write ``agent`` (and, to resume training, the optimizer, primitive training state and a
    generator's state) atomically: a reader never sees a half-written file."""
    path = Path(path)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "feature_signature": feature_signature(agent.config),
        "config": agent.config.to_dict(), "model": agent.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "training": dict(training or {}),
        "generator": None if generator is None else generator.get_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide a shipped checkpoint from other users
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fail(path: Path, where: str, message: str) -> ConfigError:
    return ConfigError([Problem(where, message)], source=str(path))


def load_checkpoint(path: str | Path, *, expect: PolicyConfig | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        expect: when given, the stored config must equal it (e.g. the training run resuming).

    Raises:
        ConfigError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "", "no such checkpoint file")
    try:
        with warnings.catch_warnings():
            # a foreign pickle protocol warns before it is refused below; ours never does
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _fail(path, "", "not a policy checkpoint: it holds objects other than tensors "
                    f"and primitives, which are never unpickled ({_first_line(e)})") from e
    except Exception as e:  # torch.load raises many types on a damaged or foreign file
        raise _fail(path, "", f"not a readable checkpoint (truncated or not a torch file): "
                    f"{type(e).__name__}: {_first_line(e)}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _fail(path, "format", f"not a {FORMAT!r} checkpoint")
    if data.get("format_version") != FORMAT_VERSION:
        raise _fail(path, "format_version", f"version {data.get('format_version')!r}, this "
                    f"sMoE reads version {FORMAT_VERSION}")
    config = PolicyConfig.from_dict(data.get("config"), source=str(path))
    if data.get("feature_signature") != feature_signature(config):
        raise _fail(path, "feature_signature", f"written for feature layout "
                    f"{data.get('feature_signature')!r}, this sMoE builds "
                    f"{feature_signature(config)!r} (retrain or use a matching version)")
    if expect is not None and expect != config:
        diff = [f.name for f in expect.__dataclass_fields__.values()
                if getattr(expect, f.name) != getattr(config, f.name)]
        raise _fail(path, "config", f"differs from the expected config in: {', '.join(diff)}")
    state = data.get("model")
    if not isinstance(state, dict):
        raise _fail(path, "model", "missing the model weights")
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(
                torch.isfinite(tensor).all()):
            raise _fail(path, f"model.{name}", "holds NaN or infinite weights")
    agent = SMoEAgent(config)
    try:
        agent.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        raise _fail(path, "model", f"weights do not fit the stored config: "
                    f"{_first_line(e)}") from e
    training = data.get("training") or {}
    if not isinstance(training, dict):
        raise _fail(path, "training", "not a mapping")
    return Checkpoint(agent=agent, optimizer=data.get("optimizer"), training=training,
                      generator=data.get("generator"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
