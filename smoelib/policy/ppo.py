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
                clip: float, mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate, negated for minimisation:
    ``-mean(min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A))``.

    ``log_prob`` is either the joint log-probability of each sample ``(B,)`` (one ratio a
    sample) or factored ``(B, *F)``: one ratio per factor of the action (an expert's choices),
    each clipped on its own against the sample's advantage, averaged over the factors ``mask``
    ``(*F)`` marks (the multi-agent form of PPO, every factor an agent sharing the reward).

    Returns the loss and diagnostics: ``losses/approx_kl`` the ``(r - 1) - log r`` estimator
    per ratio (per factor when factored), ``losses/joint_kl`` its sum over a sample's factors
    (the joint policy's KL; equal to the former when joint), ``losses/clip_fraction``.
    """
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    adv = advantages.reshape(advantages.shape + (1,) * (log_prob.dim() - 1))
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    kl = ((ratio - 1.0) - log_ratio).detach()
    clipped = ((ratio - 1.0).abs() > clip).detach().to(log_prob.dtype)
    if mask is None:
        mean = torch.mean
    else:
        w = mask.to(log_prob.dtype)
        n = w.sum().clamp_min(1.0) * log_prob.shape[0]
        kl = kl * w

        def mean(x: Tensor) -> Tensor:
            return (x * w).sum() / n
    stats = {"losses/approx_kl": mean(kl), "losses/clip_fraction": mean(clipped),
             "losses/joint_kl": kl.reshape(log_prob.shape[0], -1).sum(-1).mean()}
    return -mean(surrogate), stats


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
