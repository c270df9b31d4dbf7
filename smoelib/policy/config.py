"""``PolicyConfig``: the learned policy's own configuration, stored inside every checkpoint.

Everything that fixes the network's shape (hidden sizes, layers, the action choices, the GPU
sharing mode that decides which heads exist) lives here, not in ``config.yaml``; the training
recipe (PPO's hyper-parameters) lives in one place, :class:`smoelib.policy.train.TrainConfig`,
which checkpoints store beside it. A checkpoint carries the exact config it was trained with,
and loading refuses a checkpoint whose config or feature layout does not match
(:mod:`smoelib.policy.checkpoint`).
The stored form is a plain dict of primitives (:meth:`PolicyConfig.to_dict`), so checkpoints load
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from smoelib.core.accounting import gpu_per_pod
from smoelib.errors import ConfigError, Problem

__all__ = ["PolicyConfig", "ARCHITECTURES", "Architecture", "CAPACITY_MODES", "REPLICA_BASES",
           "FEATURE_SETS", "choice_problems"]

Architecture = Literal["smoe", "smoe-mlp", "smoe-independent"]
ARCHITECTURES: tuple[str, ...] = ("smoe", "smoe-mlp", "smoe-independent")
_SHARING = ("mps-env", "mps-device-plugin", "none")
CAPACITY_MODES: tuple[str, ...] = ("even", "spare")
REPLICA_BASES: tuple[str, ...] = ("current", "queueing")
"""what the replica head's change is relative to: the expert's current desired replicas, or
the replicas a model-based plan (the registered decider of that name) sizes this tick"""
FEATURE_SETS: tuple[str, ...] = ("base", "lookahead")
"""the node features a network reads: ``base`` (smoelib.policy.features.FEATURE_NAMES), or
``lookahead``: those and LOOKAHEAD_FEATURES (each expert's load against the shield's bound,
its layer's popularity shift, the time since its replicas and since its other knobs changed)"""
_LIMITS = {"hidden": 1024, "dagnn_layers": 8, "decode_steps": 256, "slots_per_gpu": 64,
           "max_replica_step": 256, "choices": 64}
"""The largest sizes a config may ask for: far above every shipped policy (hidden 32), far below
what would exhaust the machine (a hidden of 200,000 asks for hundreds of GB)."""
_CHOICES = {"architecture": ARCHITECTURES, "capacity": CAPACITY_MODES, "gpu_sharing": _SHARING,
            "replica_base": REPLICA_BASES, "features": FEATURE_SETS}


@dataclass(frozen=True)
class PolicyConfig:
    """The network's shape and the training hyper-parameters (CleanRL's ``Args``, typed)."""

    architecture: Architecture = "smoe"
    """smoe: DAGNN + pointer decoder; smoe-mlp: per-node MLP instead of the DAGNN;
    smoe-independent: DAGNN with every expert decoded at once (no pointer, no budget state)"""
    hidden: int = 32
    """width of node embeddings, the decoder state and the heads (units)"""
    dagnn_layers: int = 1
    """DAGNN layers per direction; each is one full topological sweep, so one layer already
    sees every ancestor (forward) and descendant (reverse); more layers refine, at the cost of
    one sequential step per depth level each"""
    bidirectional: bool = True
    """also sweep the reversed DAG, so upstream experts see downstream congestion"""
    decode_steps: int = 4
    """pointer decoding steps per MoE layer; each step decodes a block of
    ceil(max experts per layer / decode_steps) experts (2 per step for 6-expert layers, 64 at
    256); the sequential cost is decode_steps whatever the pipeline's size"""
    capacity: Literal["even", "spare"] = "even"
    """how the decoder's capacity masks share the cluster's expert GPUs. even: every MoE layer
    gets a share in proportion to its expert count and the experts of a block split what is
    left of it evenly (a block never overdraws). spare: every layer keeps its current GPU use
    plus its expert count's share of the unused GPUs, and each expert of a block may take all
    that is left of its layer (a block may overdraw it; the guard fits the cluster). Under load
    the even split forbids decisions that give one hot expert more than its even share"""
    tanh_clip: float = 10.0
    """logits are squashed to [-tanh_clip, tanh_clip] before masking (Bello et al.); 0 disables"""
    gpu_sharing: Literal["mps-env", "mps-device-plugin", "none"] = "mps-env"
    """the GPU sharing mode; the gpu_share head exists only for mps-env"""
    slots_per_gpu: int = 4
    """mps-device-plugin: every pod gets 1/slots_per_gpu of a GPU (pods)"""
    gpu_share_choices: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0)
    """GPU share choices (fraction of one GPU), from settings.actions"""
    cpu_choices: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    """CPU choices (cores)"""
    memory_choices: tuple[int, ...] = (1024, 2048, 4096, 8192)
    """memory choices (MiB)"""
    concurrency_choices: tuple[int, ...] = (1, 2, 4, 8, 16)
    """OpenFaaS max_inflight choices (calls)"""
    max_replica_step: int = 8
    """the replica head picks a change in [-max_replica_step, +max_replica_step] (replicas)"""
    replica_base: str = "current"
    """what that change is relative to: ``current`` (the expert's desired replicas) or
    ``queueing`` (a residual policy: the replicas the ``queueing`` baseline sizes for this
    tick's observation; the network also sees that plan)"""
    features: str = "base"
    """the node features it reads: ``base`` or ``lookahead`` (FEATURE_SETS)"""
    trend_short: float = 0.5
    """EWMA weight of the newest tick in the short load trend (per tick)"""
    trend_long: float = 0.05
    """EWMA weight of the newest tick in the long load trend (per tick)"""
    seed: int = 0
    """seed of the parameter initialisation (same seed, same parameters)"""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems, source="PolicyConfig")

    def problems(self) -> list[Problem]:
        """Every invalid field, at once."""
        p: list[Problem] = []
        p += choice_problems(architecture=self.architecture, capacity=self.capacity,
                             gpu_sharing=self.gpu_sharing, replica_base=self.replica_base,
                             features=self.features)
        for name in ("hidden", "dagnn_layers", "decode_steps", "slots_per_gpu",
                     "max_replica_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                p.append(Problem(name, "a positive integer"))
            elif value > _LIMITS[name]:  # a checkpoint's config must not allocate the machine
                p.append(Problem(name, f"{value} is above the largest this sMoE builds "
                                       f"({_LIMITS[name]})"))
        for name in ("gpu_share_choices", "cpu_choices", "memory_choices",
                     "concurrency_choices"):
            v = getattr(self, name)
            if not v or list(v) != sorted(v) or any(c <= 0 for c in v):
                p.append(Problem(name, "a non-empty, sorted tuple of positive values"))
            elif len(v) > _LIMITS["choices"]:
                p.append(Problem(name, f"{len(v)} choices; at most {_LIMITS['choices']}"))
        for name in ("trend_short", "trend_long"):
            if not 0.0 < getattr(self, name) <= 1.0:
                p.append(Problem(name, "in (0, 1]"))
        if self.tanh_clip < 0:
            p.append(Problem("tanh_clip", ">= 0"))
        return p

    # ---- derived -----------------------------------------------------------------------
    @property
    def heads(self) -> tuple[str, ...]:
        """The factorised action heads, in decoding order (replicas first: the capacity masks
        of the GPU head depend on it)."""
        gpu = ("gpu_share",) if self.gpu_sharing == "mps-env" else ()
        return ("replicas", *gpu, "cpu", "memory_mb", "concurrency")

    def choices(self, head: str) -> tuple[float, ...]:
        """The values a head chooses among (replicas: the change, in replicas)."""
        if head == "replicas":
            s = self.max_replica_step
            return tuple(float(d) for d in range(-s, s + 1))
        return tuple(float(c) for c in {
            "gpu_share": self.gpu_share_choices, "cpu": self.cpu_choices,
            "memory_mb": self.memory_choices, "concurrency": self.concurrency_choices}[head])

    @property
    def max_choices(self) -> int:
        """The widest head: the padded width of the choice masks and logits."""
        return max(len(self.choices(h)) for h in self.heads)

    @property
    def fixed_gpu_share(self) -> float:
        """The share every pod gets when the policy does not choose it (fraction of a GPU)."""
        if self.gpu_sharing == "mps-env":
            return 0.0  # the policy chooses it (the gpu_share head)
        return gpu_per_pod(1.0, mode=self.gpu_sharing, slots_per_gpu=self.slots_per_gpu)

    # ---- stored form -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Primitives only (lists for tuples), safe for ``weights_only`` loading."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> PolicyConfig:
        """The inverse of :meth:`to_dict`.

        Raises:
            ConfigError: not a mapping, unknown or mistyped fields, invalid values.
        """
        if not isinstance(data, dict):
            raise ConfigError([Problem("config", "not a mapping")], source=source)
        known = {f.name: f for f in dataclasses.fields(cls)}
        problems = [Problem(f"config.{k}", "unknown field") for k in sorted(set(data) - set(known))]
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            default = getattr(cls(), name)
            if isinstance(default, tuple):
                if not isinstance(value, list | tuple):
                    problems.append(Problem(f"config.{name}", "expected a list"))
                    continue
                value = tuple(value)
            elif type(default) in (int, float, bool, str) and not _same_kind(default, value):
                problems.append(Problem(f"config.{name}",
                                        f"expected {type(default).__name__}, got {value!r}"))
                continue
            kwargs[name] = value
        if problems:
            raise ConfigError(problems, source=source)
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(list(e.problems), source=source) from e

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> PolicyConfig:
        """The action space and sharing mode of a ``Settings`` tree."""
        a = settings.actions
        base = dict(gpu_sharing=settings.gpu_sharing.mode,
                    slots_per_gpu=settings.gpu_sharing.slots_per_gpu,
                    gpu_share_choices=tuple(a.gpu_share), cpu_choices=tuple(a.cpu),
                    memory_choices=tuple(a.memory_mb), concurrency_choices=tuple(a.concurrency),
                    max_replica_step=a.max_replica_step)
        base.update(overrides)
        return cls(**base)


def choice_problems(**values: str) -> list[Problem]:
    """A problem for each named field whose value is not one of its choices (``architecture``,
    ``capacity``, ``gpu_sharing``, ``replica_base``, ``features``); shared by ``PolicyConfig`` and
    ``TrainConfig``."""
    return [Problem(name, f"one of {', '.join(_CHOICES[name])}")
            for name, value in values.items() if value not in _CHOICES[name]]


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))
