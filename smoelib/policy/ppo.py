"""PPO maths as pure tensor functions (Schulman et al. 2017; GAE: Schulman et al. 2016).

The training loop (rollouts on the simulator, minibatches, the optimizer) lives elsewhere and
calls these; each is analytically unit-tested. Conventions: time is the first dimension;
``dones[t] = 1`` when the episode ended with step ``t`` (no bootstrap past it).

Reward: ``-cost - lambda * overrun``, where ``overrun = max(0, p95 - slo) / slo`` for the step's
window and ``lambda`` is a Lagrange multiplier adapted by dual ascent so that the mean overrun
approaches its target (constrained RL instead of a hand-tuned weight).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["reward", "gae", "policy_loss", "value_loss", "entropy_loss", "lagrange_update"]


def reward(cost: Tensor, overrun: Tensor, lagrange: float, lifts: Tensor | None = None,
           shield_penalty: float = 0.0) -> Tensor:
    """Per-step reward ``-cost - lagrange * overrun - shield_penalty * lifts`` (cost in
    currency per step, overrun as a fraction of the SLO, ``lifts`` the share of the
    pipeline's experts the safety shield lifted that step: the policy pays for every
    decision the shield had to correct)."""
    out = -cost - lagrange * overrun
    return out if lifts is None else out - shield_penalty * lifts


def gae(rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor, *, gamma: float,
        lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns.

    ``delta_t = r_t + gamma * V_{t+1} * (1 - done_t) - V_t``;
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}``; returns ``A + V``.

    Shapes: ``rewards``, ``values``, ``dones`` ``(T, *)``; ``last_value`` ``(*)`` (the value of
    the state after the last step) -> advantages and returns ``(T, *)``.
    """
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_value)
    next_value = last_value
    for t in range(rewards.shape[0] - 1, -1, -1):
        live = 1.0 - dones[t].to(rewards.dtype)
        delta = rewards[t] + gamma * next_value * live - values[t]
        next_adv = delta + gamma * lam * live * next_adv
        advantages[t] = next_adv
        next_value = values[t]
    return advantages, advantages + values


def policy_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, *,
                clip: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate, negated for minimisation:
    ``-mean(min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A))``.

    Returns the loss and diagnostics (``losses/approx_kl`` the ``(r - 1) - log r`` estimator,
    ``losses/clip_fraction``).
    """
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {"losses/approx_kl": ((ratio - 1.0) - log_ratio).mean(),
                 "losses/clip_fraction": ((ratio - 1.0).abs() > clip).float().mean()}
    return loss, stats


def value_loss(values: Tensor, returns: Tensor, *, old_values: Tensor | None = None,
               clip: float | None = None) -> Tensor:
    """``0.5 * mean((V - R)^2)``; with ``old_values`` and ``clip``, the pessimistic maximum of
    that and the loss of ``old + clip(V - old, -clip, clip)`` (PPO's value clipping)."""
    loss = (values - returns).pow(2)
    if old_values is not None and clip is not None:
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (v_clipped - returns).pow(2))
    return 0.5 * loss.mean()


def entropy_loss(entropy: Tensor) -> Tensor:
    """``-mean(entropy)``: minimising it with a positive weight encourages exploration."""
    return -entropy.mean()


def lagrange_update(lagrange: float, overrun: float, *, lr: float, target: float = 0.0) -> float:
    """One dual-ascent step on the SLO multiplier, projected onto ``lambda >= 0``:
    ``max(0, lambda + lr * (mean overrun - target))``."""
    return max(0.0, lagrange + lr * (overrun - target))
