"""Categorical action heads and the one place where logits are clipped and masked.

Every distribution the policy samples from (the pointer over experts and each knob's head) goes
through :func:`clip_and_mask`: logits are squashed with ``tanh`` to ``[-clip, clip]`` (Bello et
al. 2016; Kool et al. 2019) and masked choices get :data:`MASKED`, a large finite negative number.
With clipping on, a masked choice's probability is exactly 0 in float32 (``exp(-1e9)``), so it is
never sampled, while softmax, log-probabilities and entropies stay free of NaN (a fully masked row
cannot happen: the feature builder always leaves one valid choice).

Sampling takes a :class:`torch.Generator` (Gumbel-max), never the global RNG.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["MASKED", "clip_and_mask", "gumbel", "sample", "log_prob_entropy",
           "FactorisedHeads", "reset_linears"]

MASKED = -1e9


def clip_and_mask(logits: Tensor, mask: Tensor, clip: float) -> Tensor:
    """``tanh(logits) * clip`` (when ``clip > 0``), then :data:`MASKED` where ``mask`` is False.

    Shapes: ``logits`` ``(*, C)``; ``mask`` broadcastable to it (True = allowed).
    """
    if clip > 0:
        logits = torch.tanh(logits) * clip
    return logits.masked_fill(~mask, MASKED)


def gumbel(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Standard Gumbel noise drawn from ``generator``."""
    u = torch.rand(shape, generator=generator).clamp_(1e-12, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def sample(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One choice per row by Gumbel-max; ``generator=None`` takes the argmax (greedy).

    Shapes: ``logits`` ``(*, C)`` (already clipped and masked) -> ``(*,)`` long.
    """
    if generator is None:
        return logits.argmax(-1)
    return (logits + gumbel(logits.shape, generator)).argmax(-1)


def log_prob_entropy(logits: Tensor, choice: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of ``choice`` and the entropy of each row.

    Shapes: ``logits`` ``(*, C)``, ``choice`` ``(*,)`` -> two ``(*,)`` tensors.
    """
    logp = torch.log_softmax(logits, -1)  # (*, C)
    chosen = logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1)  # (*,)
    entropy = -(logp.exp() * logp).sum(-1)  # masked: 0 * -1e9 = 0
    return chosen, entropy


class FactorisedHeads(nn.Module):
    """One categorical head per knob over a shared trunk, all heads in one padded tensor.

    The trunk's pre-activation is split into an expert part (computed once per expert, before
    decoding) and a context part (once per layer and decoding step), so a decoding step adds two
    projections instead of projecting a concatenation for every expert.

    Args:
        expert_channels (int): width of an expert's embedding.
        context_channels (int): width of the per-layer, per-step context.
        hidden (int): width of the trunk.
        sizes (dict[str, int]): head name -> number of choices, in decoding order.

    Shapes:
        - **input:** expert part ``(*, K, hidden)`` (from :meth:`expert_part`), context
          ``(*, context_channels)``
        - **output:** logits ``(*, K, heads, max choices)``; columns past a head's size are
          padding (the choice masks keep them False)
    """

    def __init__(self, expert_channels: int, context_channels: int, hidden: int,
                 sizes: dict[str, int]):
        super().__init__()
        self.sizes = dict(sizes)
        self.width = max(sizes.values())
        self.from_expert = nn.Linear(expert_channels, hidden)
        self.from_context = nn.Linear(context_channels, hidden, bias=False)
        self.out = nn.Linear(hidden, len(sizes) * self.width)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        reset_linears(self, generator, last_gain=0.01)

    def expert_part(self, experts: Tensor) -> Tensor:
        """Shapes: ``(*, expert_channels)`` -> ``(*, hidden)``."""
        return self.from_expert(experts)

    def forward(self, expert_part: Tensor, context: Tensor) -> Tensor:
        z = torch.tanh(expert_part + self.from_context(context).unsqueeze(-2))  # (*, K, hidden)
        return self.out(z).unflatten(-1, (len(self.sizes), self.width))  # (*, K, heads, width)


def reset_linears(module: nn.Module, generator: torch.Generator | None, *,
                  last_gain: float | None = None) -> None:
    """Orthogonal weights (gain sqrt 2; ``last_gain`` for the output layers of a head, as in
    CleanRL's ``layer_init``), zero biases; GRU weights uniform in +-1/sqrt(hidden).

    Every draw comes from ``generator``, so one seed gives one set of parameters.
    """
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            gain = last_gain if (last_gain is not None and name == "out") else \
                math.sqrt(2.0)
            nn.init.orthogonal_(sub.weight, gain=gain, generator=generator)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.GRUCell):
            bound = 1.0 / math.sqrt(sub.hidden_size)
            for p in sub.parameters():
                nn.init.uniform_(p, -bound, bound, generator=generator)
