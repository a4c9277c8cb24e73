"""``policy_loss`` against hand-computed cases and a plain loop over tokens and paths.

Each case is a few explicit tokens. The expected numbers are worked out in the comments,
or by ``loop_policy_loss``: the same loss written as a Python loop over floats, with no
torch, so that a vectorisation or masking slip in ``policy_loss`` cannot hide in both.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest
import torch

from learner.config import LossSection
from learner.losses import PolicyLossInputs, loss_token_weights, policy_loss

LOG = math.log


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def inputs(
    current: torch.Tensor,
    behaviour: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    *,
    proximal: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    paths: list[list[int]] | None = None,
    path_advantages: tuple[float, ...] = (),
) -> PolicyLossInputs:
    """``paths`` lists each path's target indices; by default every target is its own path."""
    paths = paths if paths is not None else [[i] for i in range(len(current))]
    return PolicyLossInputs(
        current_logprobs=current,
        behaviour_logprobs=behaviour,
        proximal_logprobs=proximal,
        reference_logprobs=reference,
        advantages=advantages,
        token_weights=weights,
        path_of_pair=torch.tensor([p for p, path in enumerate(paths) for _ in path], dtype=torch.long),
        target_of_pair=torch.tensor([i for path in paths for i in path], dtype=torch.long),
        path_advantages=t(*path_advantages) if path_advantages else torch.zeros(len(paths), dtype=torch.float64),
    )


def stats_dict(stats) -> dict[str, float]:
    names = ("loss", "clipped", "mismatch_kl", "importance_weight", "reference_kl")
    return dict(zip(names, stats.as_tensor().tolist(), strict=True))


def k3(log_ratio: float) -> float:
    return math.exp(log_ratio) - log_ratio - 1.0


# ---------------------------------------------------------------- hand-computed cases


def test_decoupled_ppo_by_hand_caps_the_weight_and_clips_both_signs():
    # prox/behav = 0.8/0.2 = 4 -> capped at 2; 0.4/0.5 = 0.8; 0.4/0.4 = 1.
    behaviour, proximal = t(LOG(0.2), LOG(0.5), LOG(0.4)), t(LOG(0.8), LOG(0.4), LOG(0.4))
    # current/prox = 1.1 (inside the clip), 1.5 (above 1 + eps), 0.5 (below 1 - eps)
    current = (proximal.exp() * t(1.1, 1.5, 0.5)).log().requires_grad_()
    advantages, weights = t(1, 1, -1), t(1, 2, 1)
    settings = LossSection(kind="decoupled_ppo", clip_eps=0.2, importance_cap=2.0)
    loss, stats = policy_loss(settings, inputs(current, behaviour, advantages, weights, proximal=proximal), 4.0, 1.0)
    # token losses  -min(ρA, clip(ρ)A) x IS:  -1.1 x 2 = -2.2;  -1.2 x 0.8 = -0.96;  +0.8 x 1 = 0.8
    # weighted mean over 4 token weights: (-2.2 - 2 x 0.96 + 0.8) / 4 = -0.83
    assert loss.item() == pytest.approx(-0.83)
    got = stats_dict(stats)
    assert got["loss"] == pytest.approx(-0.83)
    assert got["clipped"] == 3.0  # tokens 1 (weight 2) and 2 (weight 1): the clipped branch is the min
    assert got["importance_weight"] == pytest.approx(2 * 1 + 0.8 * 2 + 1 * 1)
    # current/behaviour = 0.88/0.2, 0.6/0.5, 0.2/0.4
    assert got["mismatch_kl"] == pytest.approx(k3(LOG(4.4)) + 2 * k3(LOG(1.2)) + k3(LOG(0.5)))
    assert got["reference_kl"] == 0.0
    loss.backward()
    # only the unclipped token moves: d/dlogπ of -ρ A IS w / 4 = -1.1 x 2 / 4
    assert current.grad.tolist() == pytest.approx([-0.55, 0.0, 0.0])


def test_ppo_clip_by_hand_takes_the_unclipped_branch_when_it_is_the_pessimistic_one():
    behaviour = t(LOG(0.5), LOG(0.5))
    current = t(LOG(0.75), LOG(0.25)).requires_grad_()  # ρ = 1.5 with A = -1, ρ = 0.5 with A = +1
    settings = LossSection(kind="ppo_clip", clip_eps=0.2, importance_cap=1.0)
    loss, stats = policy_loss(settings, inputs(current, behaviour, t(-1, 1), t(1, 1)), 2.0, 1.0)
    # -min(-1.5, -1.2) = 1.5 and -min(0.5, 0.8) = -0.5: both take ρA, neither counts as clipped
    assert loss.item() == pytest.approx((1.5 - 0.5) / 2)
    got = stats_dict(stats)
    assert got["clipped"] == 0.0
    # against behaviour, with one update per batch proximal = current: the weight is not capped
    assert got["importance_weight"] == pytest.approx(1.5 + 0.5)
    loss.backward()
    assert current.grad.tolist() == pytest.approx([1.5 / 2, -0.5 / 2])


def test_without_a_frozen_proximal_policy_decoupled_ppo_never_clips():
    # proximal = current (detached): ρ = 1 everywhere, the loss is -IS x A, IS = min(π/μ, cap)
    behaviour = t(LOG(0.1), LOG(0.5))
    current = t(LOG(0.5), LOG(0.25)).requires_grad_()  # π/μ = 5 -> capped 2, and 0.5
    settings = LossSection(kind="decoupled_ppo", clip_eps=0.2, importance_cap=2.0)
    loss, stats = policy_loss(settings, inputs(current, behaviour, t(3, -1), t(1, 1)), 2.0, 1.0)
    assert loss.item() == pytest.approx((-2 * 3 + 0.5 * 1) / 2)
    assert stats_dict(stats)["clipped"] == 0.0
    assert stats_dict(stats)["importance_weight"] == pytest.approx(2.5)
    loss.backward()
    assert current.grad.tolist() == pytest.approx([-2 * 3 / 2, 0.5 / 2])


def test_lpo_by_hand_on_two_paths_sharing_a_prefix_token():
    # target 0 is shared; paths are {0, 1} and {0, 2}; path probabilities 0.5 x 0.4 and 0.5 x 0.6
    current = t(LOG(0.5), LOG(0.4), LOG(0.6)).requires_grad_()
    settings = LossSection(kind="lpo", lpo_beta=1.0, lpo_divergence="forward_kl")
    batch = inputs(
        current, current.detach(), t(0, 0, 0), t(2, 1, 1), paths=[[0, 1], [0, 2]], path_advantages=(1.0, 0.0)
    )
    loss, stats = policy_loss(settings, batch, 4.0, 2.0)
    p = (0.2 / 0.5, 0.3 / 0.5)  # renormalised over the group
    q = (math.e / (math.e + 1), 1 / (math.e + 1))  # softmax(A / beta)
    kl = sum(qi * LOG(qi / pi) for pi, qi in zip(p, q, strict=True))
    assert loss.item() == pytest.approx(kl / 2)  # divided by the batch's 2 groups
    got = stats_dict(stats)
    assert got["clipped"] == 0.0 and got["importance_weight"] == pytest.approx(4.0) and got["mismatch_kl"] == 0.0
    loss.backward()
    # dKL(q||p)/ds_i = p_i - q_i; the shared token is in both sums, whose gradients cancel
    assert current.grad.tolist() == pytest.approx([0.0, (p[0] - q[0]) / 2, (p[1] - q[1]) / 2])


def test_lpo_over_packed_trees_sums_one_group_per_tree():
    # Two trees in one forward: tree A's paths {0, 1} and {0, 2} as above, tree B's {3} and {4}.
    current = t(LOG(0.5), LOG(0.4), LOG(0.6), LOG(0.3), LOG(0.3)).requires_grad_()
    settings = LossSection(kind="lpo", lpo_beta=1.0, lpo_divergence="forward_kl")
    paths = [[0, 1], [0, 2], [3], [4]]
    packed = dataclasses.replace(
        inputs(
            current,
            current.detach(),
            t(0, 0, 0, 0, 0),
            t(1, 1, 1, 1, 1),
            paths=paths,
            path_advantages=(1.0, 0.0, 0.0, 0.0),
        ),
        tree_paths=(2, 2),
    )
    loss, _ = policy_loss(settings, packed, 5.0, 2.0)
    p, q = (0.4, 0.6), (math.e / (math.e + 1), 1 / (math.e + 1))
    tree_a = sum(qi * LOG(qi / pi) for pi, qi in zip(p, q, strict=True))
    # Tree B: equal path probabilities and equal advantages, so its group loss is 0; as one
    # group of four paths the loss would differ.
    assert loss.item() == pytest.approx(tree_a / 2)
    one_group, _ = policy_loss(settings, dataclasses.replace(packed, tree_paths=None), 5.0, 2.0)
    assert one_group.item() != pytest.approx(loss.item())


def test_reference_kl_is_added_as_a_weighted_token_mean():
    behaviour = current = t(LOG(0.5), LOG(0.5))
    reference = t(LOG(0.25), LOG(0.5))
    settings = LossSection(kind="decoupled_ppo", kl_coef=0.1)
    without, _ = policy_loss(settings, inputs(current, behaviour, t(1, 1), t(3, 1)), 4.0, 1.0)
    loss, stats = policy_loss(settings, inputs(current, behaviour, t(1, 1), t(3, 1), reference=reference), 4.0, 1.0)
    # k3 = 0.5 - ln 0.5 - 1 on the first token (weight 3), 0 on the second
    assert stats_dict(stats)["reference_kl"] == pytest.approx(3 * k3(LOG(0.5)))
    assert loss.item() - without.item() == pytest.approx(0.1 * 3 * k3(LOG(0.5)) / 4)
    assert without.item() == pytest.approx(-1.0)  # ρ = IS = 1: -A averaged


def test_a_zero_weight_token_is_masked_out_of_loss_gradient_and_stats():
    behaviour = t(LOG(0.5), LOG(0.1))
    current = t(LOG(0.6), LOG(0.9)).requires_grad_()
    settings = LossSection(kind="ppo_clip", clip_eps=0.2)
    loss, stats = policy_loss(settings, inputs(current, behaviour, t(1, 5), t(1, 0)), 1.0, 1.0)
    alone = policy_loss(settings, inputs(current[:1], behaviour[:1], t(1), t(1)), 1.0, 1.0)
    assert loss.item() == pytest.approx(alone[0].item())
    assert stats_dict(stats) == pytest.approx(stats_dict(alone[1]))
    loss.backward()
    assert current.grad[1].item() == 0.0


def test_an_unknown_loss_kind_is_refused():
    class Settings:
        kind, clip_eps, importance_cap, lpo_beta, lpo_divergence, kl_coef = "reinforce", 0.2, 2.0, 1.0, "forward_kl", 0
        normalization = "token"

    with pytest.raises(ValueError, match="unknown loss kind"):
        policy_loss(Settings(), inputs(t(-1.0), t(-1.0), t(1), t(1)), 1.0, 1.0)


def test_tree_weights_sum_to_one_and_token_weights_are_left_as_they_are():
    weights = t(1, 2, 1)  # the middle token lies on two paths
    assert loss_token_weights(weights, "token") is weights
    assert loss_token_weights(weights, "tree").tolist() == pytest.approx([0.25, 0.5, 0.25])
    assert loss_token_weights(t(0, 0), "tree").tolist() == [0.0, 0.0]  # a tree with no trained token
    with pytest.raises(ValueError, match="unknown loss normalization"):
        loss_token_weights(weights, "sequence")


def test_tree_normalization_averages_each_trees_own_token_mean():
    # Two trees packed in one forward, all ratios 1 (no clipping): the token loss is -A.
    # Tree 1: three tokens, A = +1; tree 2: one token, A = -1.
    behaviour = t(LOG(0.5), LOG(0.5), LOG(0.5), LOG(0.5))
    current = behaviour.clone().requires_grad_()
    advantages, weights = t(1, 1, 1, -1), t(1, 1, 1, 1)
    by_token = LossSection(kind="ppo_clip")
    loss, _ = policy_loss(by_token, inputs(current, behaviour, advantages, weights), 4.0, 2.0)
    assert loss.item() == pytest.approx((-3 + 1) / 4)  # the longer tree dominates
    by_tree = LossSection(kind="ppo_clip", normalization="tree")
    tree_weights = torch.cat([loss_token_weights(weights[:3], "tree"), loss_token_weights(weights[3:], "tree")])
    packed = dataclasses.replace(inputs(current, behaviour, advantages, weights), loss_weights=tree_weights)
    loss, stats = policy_loss(by_tree, packed, 4.0, 2.0)
    assert loss.item() == pytest.approx((-1 + 1) / 2)  # each tree's mean, then the trees' mean
    loss.backward()
    # d(-ρA)/d log π = -A ρ, weighted 1/3 per token of tree 1 and 1 for tree 2, over 2 trees.
    assert current.grad.tolist() == pytest.approx([-1 / 6, -1 / 6, -1 / 6, 1 / 2])
    assert stats_dict(stats)["importance_weight"] == pytest.approx(4.0)  # diagnostics keep token weights


# ---------------------------------------------------------------- the loop reference


def loop_policy_loss(
    settings, current, behaviour, proximal, reference, advantages, weights, paths, path_adv, tw, groups
):
    """The loss and stats token by token, in plain floats."""
    n = len(current)
    proximal = current if proximal is None else proximal
    loss = clipped = importance = 0.0
    if settings.kind in ("ppo_clip", "decoupled_ppo"):
        for i in range(n):
            old = behaviour[i] if settings.kind == "ppo_clip" else proximal[i]
            ratio = math.exp(current[i] - old)
            unclipped = ratio * advantages[i]
            clipped_term = min(max(ratio, 1 - settings.clip_eps), 1 + settings.clip_eps) * advantages[i]
            weight = math.exp(proximal[i] - behaviour[i])
            if settings.kind == "decoupled_ppo":
                weight = min(weight, settings.importance_cap)
            token_loss = -min(unclipped, clipped_term)
            if settings.kind == "decoupled_ppo":
                token_loss *= weight
            loss += weights[i] * token_loss / tw
            clipped += weights[i] * (clipped_term < unclipped)
            importance += weights[i] * weight
    else:
        sums = [sum(current[i] for i in path) for path in paths]
        top = max(sums)
        log_z = top + math.log(sum(math.exp(s - top) for s in sums))
        log_p = [s - log_z for s in sums]
        scaled = [a / settings.lpo_beta for a in path_adv]
        top = max(scaled)
        log_zq = top + math.log(sum(math.exp(a - top) for a in scaled))
        log_q = [a - log_zq for a in scaled]
        if settings.lpo_divergence == "forward_kl":
            kl = sum(math.exp(lq) * (lq - lp) for lp, lq in zip(log_p, log_q, strict=True))
        else:
            kl = sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q, strict=True))
        loss = kl / groups
        importance = sum(weights)
    mismatch = sum(weights[i] * k3(current[i] - behaviour[i]) for i in range(n))
    ref_kl = 0.0
    if reference is not None:
        ref_kl = sum(weights[i] * k3(reference[i] - current[i]) for i in range(n))
        loss += settings.kl_coef * ref_kl / tw
    return {
        "loss": loss,
        "clipped": clipped,
        "mismatch_kl": mismatch,
        "importance_weight": importance,
        "reference_kl": ref_kl,
    }


SETTINGS = [
    LossSection(kind="ppo_clip", clip_eps=0.2),
    LossSection(kind="ppo_clip", clip_eps=0.05, kl_coef=0.3),
    LossSection(kind="decoupled_ppo", clip_eps=0.2, importance_cap=1.5),
    LossSection(kind="decoupled_ppo", clip_eps=0.1, importance_cap=4.0, kl_coef=0.05),
    LossSection(kind="lpo", lpo_beta=0.5, lpo_divergence="forward_kl"),
    LossSection(kind="lpo", lpo_beta=2.0, lpo_divergence="reverse_kl", kl_coef=0.1),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"{s.kind}-kl{s.kl_coef}")
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("frozen_proximal", [True, False])
def test_policy_loss_matches_the_loop(settings, seed, frozen_proximal):
    rng = random.Random(seed)
    n = rng.randint(3, 7)
    logprobs = [[-rng.uniform(0.05, 3.0) for _ in range(n)] for _ in range(4)]
    current, behaviour, proximal, reference = logprobs
    advantages = [rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 2.0) for _ in range(n)]
    weights = [float(rng.randint(0, 3)) for _ in range(n)]
    # Two or three paths over the targets, sharing target 0 as their prefix.
    splits = sorted(rng.sample(range(2, n), rng.randint(2, min(3, n - 1)) - 1))
    bounds = [1, *splits, n]
    paths = [[0, *range(a, b)] for a, b in itertools.pairwise(bounds)]
    path_adv = [rng.uniform(-1, 1) for _ in paths]
    tw, groups = sum(weights) + 1.0, 3.0
    use_reference = settings.kl_coef > 0

    loss, stats = policy_loss(
        settings,
        inputs(
            t(*current),
            t(*behaviour),
            t(*advantages),
            t(*weights),
            proximal=t(*proximal) if frozen_proximal else None,
            reference=t(*reference) if use_reference else None,
            paths=paths,
            path_advantages=tuple(path_adv),
        ),
        tw,
        groups,
    )
    expected = loop_policy_loss(
        settings,
        current,
        behaviour,
        proximal if frozen_proximal else None,
        reference if use_reference else None,
        advantages,
        weights,
        paths,
        path_adv,
        tw,
        groups,
    )
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-9, abs=1e-12)
    assert stats_dict(stats) == pytest.approx(expected, rel=1e-9, abs=1e-12)
