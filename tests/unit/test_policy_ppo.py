"""PPO maths on hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from smoelib.policy.ppo import entropy_loss, gae, lagrange_update, policy_loss, reward, value_loss


def test_gae_matches_a_hand_computed_sequence():
    # gamma 0.5, lambda 0.5; episode ends after step 1, a new one runs steps 2..3
    rewards = torch.tensor([1.0, 2.0, 0.0, 4.0])
    values = torch.tensor([0.5, 1.0, 2.0, 1.0])
    dones = torch.tensor([0.0, 1.0, 0.0, 0.0])
    last = torch.tensor(2.0)
    adv, ret = gae(rewards, values, dones, last, gamma=0.5, lam=0.5)
    # deltas: t3 = 4 + .5*2 - 1 = 4;  t2 = 0 + .5*1 - 2 = -1.5
    #         t1 = 2 + 0 - 1 = 1 (done: no bootstrap); t0 = 1 + .5*1 - .5 = 1
    # advantages: A3 = 4; A2 = -1.5 + .25*4 = -0.5; A1 = 1 (done); A0 = 1 + .25*1 = 1.25
    assert adv.tolist() == pytest.approx([1.25, 1.0, -0.5, 4.0])
    assert ret.tolist() == pytest.approx([1.75, 2.0, 1.5, 5.0])


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    values = torch.tensor([[0.3], [0.2], [0.1]])
    adv, ret = gae(rewards, values, torch.zeros(3, 1), torch.tensor([10.0]), gamma=0.9, lam=1.0)
    expected = [1 + 0.9 + 0.81 + 0.729 * 10, 1 + 0.9 + 0.81 * 10, 1 + 0.9 * 10]
    assert ret[:, 0].tolist() == pytest.approx(expected)
    assert adv[:, 0].tolist() == pytest.approx([e - v for e, v in zip(expected, [.3, .2, .1],
                                                                        strict=True)])


def test_clipped_policy_loss_on_hand_numbers():
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 0.5, 1.1]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([2.0, -1.0, 1.0])
    loss, stats = policy_loss(new, old, adv, clip=0.2)
    # min(1.5*2, 1.2*2) = 2.4; min(.5*-1, .8*-1) = -.8; min(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx(-(2.4 - 0.8 + 1.1) / 3)
    assert stats["losses/clip_fraction"].item() == pytest.approx(2 / 3)
    kl = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)]
    assert stats["losses/approx_kl"].item() == pytest.approx(sum(kl) / 3, rel=1e-5)


def test_policy_loss_gradient_vanishes_where_clipped():
    new = torch.log(torch.tensor([1.5, 0.9])).requires_grad_()
    loss, _ = policy_loss(new, torch.zeros(2), torch.tensor([1.0, 1.0]), clip=0.2)
    loss.backward()
    assert new.grad[0].item() == 0.0  # ratio 1.5 > 1.2 with a positive advantage: clipped
    assert new.grad[1].item() == pytest.approx(-0.9 / 2)


def test_value_loss_plain_and_clipped():
    v, r = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])
    assert value_loss(v, r).item() == pytest.approx(0.5)
    old = torch.tensor([0.0, 3.0])
    # clipped: 0 + clip(1, -.5, .5) = .5 -> (.5-2)^2 = 2.25 > 1; second: 3 -> 1
    assert value_loss(v, r, old_values=old, clip=0.5).item() == pytest.approx(0.5 * (2.25 + 1) / 2)


def test_reward_entropy_and_lagrange():
    assert reward(torch.tensor(2.0), torch.tensor(0.5), 4.0).item() == pytest.approx(-4.0)
    assert entropy_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)
    assert lagrange_update(1.0, 0.3, lr=0.5) == pytest.approx(1.15)
    assert lagrange_update(1.0, 0.0, lr=0.5, target=0.1) == pytest.approx(0.95)
    assert lagrange_update(0.01, 0.0, lr=1.0, target=0.5) == 0.0  # projected onto >= 0


def test_the_reward_pays_for_the_shields_lifts():
    cost, over = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.5])
    lifts = torch.tensor([0.0, 0.25])  # a quarter of the experts lifted at the second tick
    assert reward(cost, over, 2.0).tolist() == [-1.0, -2.0]
    assert reward(cost, over, 2.0, lifts, 4.0).tolist() == [-1.0, -3.0]


def test_factored_policy_loss_clips_each_factor_and_skips_padding():
    # two samples, three factors each; the last factor is padding (mask False)
    ratios = torch.tensor([[1.5, 1.1, 9.0], [0.5, 1.0, 9.0]])
    new = ratios.log().requires_grad_()
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([True, True, False])
    loss, stats = policy_loss(new, torch.zeros(2, 3), adv, clip=0.2, mask=mask)
    # sample 1: min(1.5*2, 1.2*2) = 2.4, min(1.1*2, 1.1*2) = 2.2; sample 2: -0.8, -1.0
    assert loss.item() == pytest.approx(-(2.4 + 2.2 - 0.8 - 1.0) / 4)
    assert stats["losses/clip_fraction"].item() == pytest.approx(2 / 4)
    kl = [[(r - 1) - math.log(r) for r in row] for row in ([1.5, 1.1], [0.5, 1.0])]
    assert stats["losses/approx_kl"].item() == pytest.approx(sum(map(sum, kl)) / 4, rel=1e-5)
    assert stats["losses/joint_kl"].item() == pytest.approx(sum(map(sum, kl)) / 2, rel=1e-5)
    loss.backward()
    assert new.grad[0, 0].item() == 0.0  # clipped on its own, whatever the other factor did
    assert new.grad[0, 1].item() == pytest.approx(-1.1 * 2 / 4)
    assert (new.grad[:, 2] == 0).all()  # padding never moves the policy


def test_a_joint_ratio_is_one_factor():
    new, adv = torch.log(torch.tensor([1.5, 0.5])), torch.tensor([2.0, -1.0])
    joint, js = policy_loss(new, torch.zeros(2), adv, clip=0.2)
    one, fs = policy_loss(new.unsqueeze(-1), torch.zeros(2, 1), adv, clip=0.2,
                          mask=torch.tensor([True]))
    assert joint.item() == pytest.approx(one.item())
    assert js["losses/joint_kl"].item() == pytest.approx(fs["losses/approx_kl"].item())
