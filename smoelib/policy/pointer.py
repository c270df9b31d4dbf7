"""Pointer decoder: each MoE layer's experts decoded in a learned order under a GPU budget.

All MoE layers are decoded in parallel (a batch over layers). Within a layer, a decoder state
(GRU; initialised from the layer summary and the graph embedding) points at the experts not yet
decoded (scaled dot-product attention, tanh-clipped, Kool et al. 2019) and picks the next *block*
of ``ceil(max experts per layer / decode_steps)`` experts by sampling without replacement (Gumbel
top-k, whose log-probability is the Plackett-Luce product). Each expert of the block then picks
its knobs from factorised categorical heads; the replicas head comes first and the GPU share head
after it, so that the capacity masks of both see the remaining budget. The block's GPU use
(replicas x share) is taken off the layer's budget before the next step.

Why blocks: a strictly sequential pointer needs 256 steps at DeepSeek-V3 scale; with blocks the
number of sequential steps is ``decode_steps`` whatever the layer size, and small layers (6
experts, ``decode_steps`` 8) still decode one expert per step. The capacity masks share the
remaining budget evenly among the experts of a block, so a block can never overdraw it
(``PolicyConfig.capacity`` "even"); with "spare" each expert of a block may take all that remains
of its layer (a block may overdraw it; the guard fits the cluster), and the layer budgets follow
the current use (:func:`smoelib.policy.features.build_features`).

``pointer=False`` is the ``smoe-independent`` ablation: one block of every expert, no order, no
state update (each expert gets an even share of the layer budget, or all of it with "spare").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from smoelib.policy.config import PolicyConfig
from smoelib.policy.heads import (
    FactorisedHeads,
    clip_and_mask,
    gumbel,
    log_prob_entropy,
    reset_linears,
    sample,
)

__all__ = ["Actions", "DecodeOutput", "PointerDecoder", "plackett_luce"]


class Actions(NamedTuple):
    """What the policy chose, enough to recompute its log-probability.

    Shapes: ``order`` ``(B, L, P)`` expert slots in decoding order (positions at or past a
    layer's expert count are padding); ``choices`` ``(B, L, E, K)`` the index of each head's
    choice per expert slot, heads in ``PolicyConfig.heads`` order.
    """

    order: Tensor
    choices: Tensor


class DecodeOutput(NamedTuple):
    """Shapes: ``log_prob`` and ``entropy`` ``(B,)`` (summed over layers, experts and heads;
    zeros when decoded with ``score=False``); ``slot_log_prob`` ``(B, L, E)`` the same
    log-probability per expert slot (its knob choices and the pointer's pick of it; 0 on
    padding; ``log_prob`` is its sum), None with ``score=False``."""

    actions: Actions
    log_prob: Tensor
    entropy: Tensor
    slot_log_prob: Tensor | None = None


def plackett_luce(scores: Tensor, block: Tensor, valid: Tensor, left: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """Log-probability of each pick of ``block`` in order without replacement (Plackett-Luce:
    the law of Gumbel top-k; 0 where not ``valid``), and the entropy of the first pick.

    ``left`` marks the experts still available after the block: the denominator of the j-th
    pick is the mass of those plus the block's picks j..K (a suffix sum, no cancellation).

    Shapes: ``scores`` ``(B, L, E)`` clipped and masked; ``block`` ``(B, L, K)``; ``valid``
    ``(B, L, K)``; ``left`` ``(B, L, E)`` -> ``(B, L, K)`` and ``(B, L)``.
    """
    shifted = scores - scores.amax(-1, keepdim=True)  # (B, L, E): <= 0
    w = shifted.exp()  # (B, L, E): masked entries are exactly 0
    total = w.sum(-1)  # (B, L)
    rest = (w * left).sum(-1, keepdim=True)  # (B, L, 1): mass not picked by this block
    picked = w.gather(-1, block)  # (B, L, K)
    suffix = picked.flip(-1).cumsum(-1).flip(-1)  # (B, L, K): sum of picks j..K
    lp = shifted.gather(-1, block) - (rest + suffix).clamp_min(1e-30).log()  # (B, L, K)
    logp = torch.where(valid, lp, 0.0)  # (B, L, K)
    p = w / total.unsqueeze(-1)  # (B, L, E)
    entropy = (total.log() - (p * shifted).sum(-1)) * valid.any(-1)  # (B, L)
    return logp, entropy


def _first(mask: Tensor) -> Tensor:
    """Only the first True of each row (the smallest allowed value: choices are sorted).
    ``argmax`` returns the first maximal index; a row without a True stays all False."""
    first = mask.to(torch.uint8).argmax(-1, keepdim=True)  # (*, 1)
    return mask & (torch.arange(mask.shape[-1], device=mask.device) == first)


def _take(x: Tensor, slots: Tensor, shape: torch.Size) -> Tensor:
    """``x``'s expert slots along dim 2: one ``index_select`` on the flattened slots (much
    cheaper on CPU than ``gather`` with an expanded index). ``slots`` is a block's flat index
    (``block + layer offset``, built once per decoding step), ``shape`` the block's.

    Shapes: ``x`` ``(B, L, E, *rest)``, ``slots`` ``(B * L * K,)`` -> ``(*shape, *rest)``.
    """
    rest = x.shape[3:]
    return x.reshape(-1, *rest).index_select(0, slots).view(*shape, *rest)


class PointerDecoder(nn.Module):
    """Decodes every expert's knobs, all MoE layers at once.

    Args:
        config (PolicyConfig): widths, choices, heads, ``decode_steps``, ``tanh_clip``.
        pointer (bool): decode in a learned order with a budget state (default: True);
            False decodes every expert at once (the ``smoe-independent`` ablation).

    Shapes:
        - **input:** expert embeddings ``(B, L, E, H)``, ``valid`` ``(L, E)`` (False: padding,
          always at the end of a row), layer summaries ``(B, L, H)``, graph embedding ``(B, H)``,
          ``replicas`` ``(B, L, E)`` current desired replicas, ``choice_mask``
          ``(B, L, E, heads, C)`` bounds masks, ``budget`` ``(B, L)`` GPUs each layer may use
        - **output:** :class:`DecodeOutput`
    """

    def __init__(self, config: PolicyConfig, *, pointer: bool = True):
        super().__init__()
        h, width = config.hidden, config.max_choices
        self.config, self.pointer, self.head_names = config, pointer, config.heads
        deltas = torch.zeros(width)
        deltas[:len(config.choices("replicas"))] = torch.tensor(config.choices("replicas"))
        self.register_buffer("deltas", deltas, persistent=False)  # (C,) padded
        self.gpu_row = self.head_names.index("gpu_share") if "gpu_share" in self.head_names \
            else None
        shares = torch.full((width,), config.fixed_gpu_share)
        if self.gpu_row is not None:
            shares[:len(config.gpu_share_choices)] = torch.tensor(config.gpu_share_choices)
        self.register_buffer("shares", shares, persistent=False)  # (C,) padded
        self.budgeted = bool(shares[0] > 0)
        self.even = config.capacity == "even"
        self.init_state = nn.Linear(2 * h, h)
        self.heads = FactorisedHeads(h, 3 * h + 2, h, {n: len(config.choices(n))
                                                       for n in self.head_names})
        if pointer:
            self.key = nn.Linear(h, h, bias=False)
            self.query = nn.Linear(h + 1, h, bias=False)
            self.gru = nn.GRUCell(h + 2, h)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        reset_linears(self.init_state, generator)
        self.heads.reset_parameters(generator)
        if self.pointer:
            for m in (self.key, self.query, self.gru):
                reset_linears(m, generator)

    def forward(self, expert_emb: Tensor, valid: Tensor, layer_ctx: Tensor, graph_ctx: Tensor,
                *, replicas: Tensor, choice_mask: Tensor, budget: Tensor,
                actions: Actions | None = None, generator: torch.Generator | None = None,
                score: bool = True) -> DecodeOutput:
        """Sample with ``generator``, act greedily without one, or score given ``actions``;
        ``score=False`` skips log-probabilities and entropies (the decide path)."""
        b, n_layers, e, h = expert_emb.shape
        n_heads = len(self.head_names)
        bk = math.ceil(e / self.config.decode_steps) if self.pointer else e
        n_valid = valid.sum(-1)  # (L,)
        graph_l = graph_ctx.unsqueeze(1).expand(b, n_layers, h)  # (B, L, H)
        fixed_ctx = torch.cat([layer_ctx, graph_l], -1)  # (B, L, 2H)
        state = torch.tanh(self.init_state(fixed_ctx))  # (B, L, H)
        # scaled dot-product attention: the 1/sqrt(H) folded into the keys once
        keys = self.key(expert_emb) / math.sqrt(h) if self.pointer else None  # (B, L, E, H)
        # per expert, before the loop: replica targets of every choice
        targets = (replicas.unsqueeze(-1) + self.deltas).clamp_min(0)  # (B, L, E, C)
        expert_part = self.heads.expert_part(expert_emb)  # (B, L, E, H)
        available = valid.expand(b, n_layers, e).clone()  # (B, L, E)
        scale = budget.clamp_min(1e-6)
        remaining = budget
        chosen_all = torch.zeros(b, n_layers, e + 1, n_heads, dtype=torch.long)
        slot_lp = expert_emb.new_zeros(b, n_layers, e + 1) if score else None  # + a spare
        orders, log_prob, entropy = [], expert_emb.new_zeros(b), expert_emb.new_zeros(b)
        steps = math.ceil(e / bk)
        in_order = (torch.arange(steps * bk).unsqueeze(0) < n_valid.unsqueeze(1)).expand(
            b, n_layers, steps * bk)  # (B, L, steps*K): is position p of the order an expert
        n_block = in_order.unflatten(-1, (steps, bk)).sum(-1).clamp_min(1)  # (B, L, steps)
        offset = torch.arange(b * n_layers).view(b, n_layers, 1) * e  # a layer's first slot
        for t in range(steps):
            pv = in_order[..., t * bk:(t + 1) * bk]  # (B, L, K)
            rem_frac = (remaining / scale).unsqueeze(-1)  # (B, L, 1)
            if self.pointer:
                q = self.query(torch.cat([state, rem_frac], -1))  # (B, L, H)
                scores = torch.matmul(keys, q.unsqueeze(-1)).squeeze(-1)  # (B, L, E)
                scores = clip_and_mask(scores, available, self.config.tanh_clip)
                if actions is not None:
                    block = actions.order[:, :, t * bk:(t + 1) * bk]  # (B, L, K)
                elif generator is None:
                    block = scores.topk(bk, -1).indices  # (B, L, K): greedy order
                else:
                    block = (scores + gumbel(scores.shape, generator)).topk(bk, -1).indices
                # 0 is False here; a bool scalar does not trace (torch.jit)
                available = available.scatter(2, block, 0)
            else:
                block = torch.arange(e).expand(b, n_layers, e)  # (B, L, E): one block
            slot = torch.where(pv, block, e)  # (B, L, K): padding goes to a spare column
            if self.pointer and score:
                lp, ent = plackett_luce(scores, block, pv, available)  # (B, L, K), (B, L)
                log_prob, entropy = log_prob + lp.sum(-1).sum(-1), entropy + ent.sum(-1)
                slot_lp = slot_lp.scatter_add(2, slot, lp)
            n_blk = n_block[..., t]  # (B, L)
            # (B, L): GPUs each expert of this block may take (capacity: "even" or "spare")
            allowance = remaining / n_blk if self.even else remaining
            ctx = torch.cat([state, fixed_ctx, rem_frac, (allowance / scale).unsqueeze(-1)], -1)
            slots, shape = (block + offset).reshape(-1), block.shape
            logits = self.heads(_take(expert_part, slots, shape), ctx)  # (B, L, K, heads, C)
            allowed = _take(choice_mask, slots, shape)  # (B, L, K, heads, C): the bounds
            given = None if actions is None else _take(actions.choices, slots, shape)
            picks, lp, ent, used = self._heads(logits, allowed, _take(targets, slots, shape),
                                               allowance, given, generator, score)
            if score:
                lp = torch.where(pv, lp, 0.0)  # (B, L, K)
                log_prob = log_prob + lp.sum((1, 2))
                entropy = entropy + torch.where(pv, ent, 0.0).sum((1, 2))
                slot_lp = slot_lp.scatter_add(2, slot, lp)
            consumed = (used * pv).sum(-1)  # (B, L) GPUs
            remaining = remaining - consumed
            chosen_all.scatter_(2, slot.unsqueeze(-1).expand(b, n_layers, bk, n_heads), picks)
            orders.append(block)
            if self.pointer:
                mean_eb = (_take(expert_emb, slots, shape) * pv.unsqueeze(-1)).sum(2) \
                    / n_blk.unsqueeze(-1)  # (B, L, H)
                inp = torch.cat([mean_eb, (remaining / scale).unsqueeze(-1),
                                 (consumed / scale).unsqueeze(-1)], -1)  # (B, L, H+2)
                state = self.gru(inp.reshape(b * n_layers, h + 2),
                                 state.reshape(b * n_layers, h)).view(b, n_layers, h)
        acts = Actions(order=torch.cat(orders, -1), choices=chosen_all[:, :, :e])
        return DecodeOutput(actions=acts, log_prob=log_prob, entropy=entropy,
                            slot_log_prob=None if slot_lp is None else slot_lp[..., :e])

    def _heads(self, logits: Tensor, allowed: Tensor, targets: Tensor, allowance: Tensor,
               given: Tensor | None, generator: torch.Generator | None, score: bool
               ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
        """Every head of one block. The replicas head is sampled first when the budget
        matters, so the GPU head's capacity mask can use the chosen replica count. A capacity
        mask keeps the bounds' smallest choice even when it does not fit (GPU use grows with
        the choice, so nothing smaller would): a row is never empty.

        Shapes: ``logits`` ``(B, L, K, heads, C)``; ``allowed`` ``(B, L, K, heads, C)`` (the
        bounds masks); ``targets`` ``(B, L, K, C)`` replicas per choice;
        ``allowance`` ``(B, L)`` -> choices ``(B, L, K, heads)``, log-probabilities,
        entropies and the GPUs each expert takes, each ``(B, L, K)``.
        """
        clip = self.config.tanh_clip
        smallest = _first(allowed)  # (B, L, K, heads, C): the bounds' smallest choice
        first = None
        if self.budgeted:
            cap = allowance.unsqueeze(-1).unsqueeze(-1) + 1e-6  # (B, L, 1, 1)
            rows = [allowed[..., 0, :] & ((targets * self.shares[0] <= cap)
                                          | smallest[..., 0, :])]  # replicas: (B, L, K, C)
            first = given[..., 0] if given is not None else sample(
                clip_and_mask(logits[..., 0, :], rows[0], clip), generator)  # (B, L, K)
            if self.gpu_row is not None:
                target = targets.gather(-1, first.unsqueeze(-1))  # (B, L, K, 1)
                g = self.gpu_row
                rows.append(allowed[..., g, :] & ((target * self.shares <= cap)
                                                  | smallest[..., g, :]))
            allowed = torch.cat([torch.stack(rows, -2), allowed[..., len(rows):, :]], -2)
        scores = clip_and_mask(logits, allowed, clip)  # (B, L, K, heads, C)
        choice = given if given is not None else sample(scores, generator)  # (B, L, K, heads)
        if first is not None and given is None:
            choice = torch.cat([first.unsqueeze(-1), choice[..., 1:]], -1)
        target = targets.gather(-1, choice[..., :1]).squeeze(-1)  # (B, L, K)
        share = self.shares[0] if self.gpu_row is None else self.shares[choice[..., self.gpu_row]]
        if not score:
            return choice, None, None, target * share
        lp, ent = log_prob_entropy(scores, choice)  # (B, L, K, heads) each
        return choice, lp.sum(-1), ent.sum(-1), target * share
