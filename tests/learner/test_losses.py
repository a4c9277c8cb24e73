from __future__ import annotations

import math

import pytest
import torch

from learner.losses import (
    decoupled_ppo_token_loss,
    importance_ratio,
    k3_kl,
    lpo_group_loss,
    mismatch_kl,
    ppo_clip_token_loss,
    truncated_importance_weight,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_ppo_clip_takes_the_pessimistic_branch():
    ratios = t(1.5, 1.5, 0.5, 1.1)
    current = ratios.log().requires_grad_()
    loss, clipped = ppo_clip_token_loss(current, t(0, 0, 0, 0), t(1, -1, -1, 2), clip_eps=0.2)
    assert loss.tolist() == pytest.approx([-1.2, 1.5, 0.8, -2.2])
    assert clipped.tolist() == [True, False, True, False]
    loss.sum().backward()
    # d(-ρA)/dlogπ = -ρA where the clip does not bind, 0 where it does
    assert current.grad.tolist() == pytest.approx([0.0, 1.5, 0.0, -2.2])


def test_decoupled_ppo_clips_against_proximal_and_caps_the_behaviour_weight():
    behaviour, proximal = t(0.2, 0.5).log(), t(0.8, 0.4).log()  # weights 4 -> capped 2, and 0.8
    current = (proximal.exp() * t(1.1, 1.5)).log()
    loss, clipped = decoupled_ppo_token_loss(current, proximal, behaviour, t(1, 1), clip_eps=0.2, cap=2.0)
    assert loss.tolist() == pytest.approx([-2.0 * 1.1, -0.8 * 1.2])
    assert clipped.tolist() == [False, True]
    assert truncated_importance_weight(proximal, behaviour, 2.0).tolist() == pytest.approx([2.0, 0.8])
    assert importance_ratio(t(0.0), t(math.log(4))).item() == pytest.approx(0.25)


def test_k3_and_mismatch_kl():
    assert k3_kl(t(math.log(0.5)), t(math.log(0.25))).item() == pytest.approx(0.5 + math.log(2) - 1)
    assert mismatch_kl(t(math.log(0.5)), t(math.log(0.25))).item() == pytest.approx(2 - math.log(2) - 1)
    assert k3_kl(t(-1.3), t(-1.3)).item() == 0.0


def test_lpo_forward_and_reverse_kl_on_a_group_of_two():
    path_logprobs = t(0.2, 0.3).log()  # renormalised over the group: p = (0.4, 0.6)
    p = (0.4, 0.6)
    q = (math.e / (math.e + 1), 1 / (math.e + 1))  # softmax of A/beta with A = (1, 0), beta = 1
    forward = lpo_group_loss(path_logprobs, t(1, 0), beta=1.0, divergence="forward_kl")
    reverse = lpo_group_loss(path_logprobs, t(1, 0), beta=1.0, divergence="reverse_kl")
    assert forward.item() == pytest.approx(sum(qi * math.log(qi / pi) for pi, qi in zip(p, q, strict=True)))
    assert reverse.item() == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    # beta scales the target: with beta = 0.5 the target is softmax(2, 0)
    sharp = lpo_group_loss(t(0.5, 0.5).log(), t(1, 0), beta=0.5, divergence="forward_kl")
    q2 = (math.e**2 / (math.e**2 + 1), 1 / (math.e**2 + 1))
    assert sharp.item() == pytest.approx(sum(qi * math.log(qi / 0.5) for qi in q2))


def test_lpo_gradient_moves_probability_toward_the_better_path():
    path_logprobs = t(-3.0, -3.0).requires_grad_()
    lpo_group_loss(path_logprobs, t(1, -1), beta=1.0, divergence="forward_kl").backward()
    # d KL(q||p)/ds_i = p_i - q_i
    q0 = math.e / (math.e + math.exp(-1))
    assert path_logprobs.grad.tolist() == pytest.approx([0.5 - q0, q0 - 0.5])
    with pytest.raises(ValueError, match="unknown LPO divergence"):
        lpo_group_loss(path_logprobs, t(1, -1), beta=1.0, divergence="js")
