"""Policy losses, importance weights and diagnostics (pure torch, no module state).

All per-token functions take flat 1-D tensors over the trained action tokens and return
per-token values. ``policy_loss`` assembles them for one tree: it weights them (a shared
node's tokens count once per path through it) and divides by the global token weight, so
the batch loss is a token mean.
Logprobs named ``behaviour`` come from the actor that sampled the token, ``proximal`` from
the learner's policy before this update, ``current`` carry the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class LossSettings(Protocol):
    """What the loss reads of the learner's ``loss`` config section."""

    @property
    def kind(self) -> str: ...
    @property
    def clip_eps(self) -> float: ...
    @property
    def importance_cap(self) -> float: ...
    @property
    def lpo_beta(self) -> float: ...
    @property
    def lpo_divergence(self) -> str: ...
    @property
    def kl_coef(self) -> float: ...
    @property
    def normalization(self) -> str: ...


def loss_token_weights(token_weights: torch.Tensor, normalization: str) -> torch.Tensor:
    """One tree's token weights as the loss uses them: as they are ("token"), or scaled to sum
    to one ("tree"), so that dividing the batch's sum by its tree count averages the trees'
    own token means."""
    if normalization == "token":
        return token_weights
    if normalization == "tree":
        total = token_weights.sum()
        return token_weights / total if float(total) > 0 else token_weights
    raise ValueError(f"unknown loss normalization {normalization!r}")


@dataclass(frozen=True)
class PolicyLossInputs:
    """One forward's trained tokens (one tree, or several packed), flat over its targets, and its paths.

    ``proximal_logprobs`` is ``None`` when the batch gets one update: the current policy,
    detached, is then the proximal one. ``reference_logprobs`` is ``None`` without a KL
    penalty. ``path_of_pair``/``target_of_pair`` list which targets make up each path, and
    ``path_advantages`` has one entry per path; only the LPO loss reads them.
    """

    current_logprobs: torch.Tensor
    behaviour_logprobs: torch.Tensor
    proximal_logprobs: torch.Tensor | None
    reference_logprobs: torch.Tensor | None
    advantages: torch.Tensor
    token_weights: torch.Tensor
    path_of_pair: torch.Tensor
    target_of_pair: torch.Tensor
    path_advantages: torch.Tensor
    # Paths per tree when one forward packs several trees: each tree is its own LPO group.
    tree_paths: tuple[int, ...] | None = None
    # The token losses' weights (``loss_token_weights`` of each tree); None: ``token_weights``.
    loss_weights: torch.Tensor | None = None


@dataclass(frozen=True)
class PolicyLossStats:
    """Diagnostic sums over one tree, float64 scalars: the loss, and token-weighted sums of the
    clipped indicator, the mismatch KL, the importance weight and the reference KL."""

    loss: torch.Tensor
    clipped: torch.Tensor
    mismatch_kl: torch.Tensor
    importance_weight: torch.Tensor
    reference_kl: torch.Tensor

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([self.loss, self.clipped, self.mismatch_kl, self.importance_weight, self.reference_kl])


def importance_ratio(numerator_logprobs: torch.Tensor, denominator_logprobs: torch.Tensor) -> torch.Tensor:
    return torch.exp(numerator_logprobs - denominator_logprobs)


def truncated_importance_weight(
    proximal_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """min(π_prox/π_behav, C), a constant: it corrects which policy sampled, not the update."""
    return importance_ratio(proximal_logprobs, behaviour_logprobs).clamp(max=cap).detach()


def ppo_clip_token_loss(
    current_logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(−min(ρA, clip(ρ, 1−ε, 1+ε)A) per token, mask of tokens where the clip binds)."""
    ratio = importance_ratio(current_logprobs, old_logprobs.detach())
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).detach()


def decoupled_ppo_token_loss(
    current_logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    cap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip against the proximal policy; weight by the truncated proximal/behaviour ratio."""
    weight = truncated_importance_weight(proximal_logprobs, behaviour_logprobs, cap)
    loss, clipped = ppo_clip_token_loss(current_logprobs, proximal_logprobs, advantages, clip_eps)
    return weight * loss, clipped


def k3_kl(current_logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(current‖reference) on tokens sampled near ``current``:
    exp(ref − cur) − (ref − cur) − 1, never negative."""
    log_ratio = reference_logprobs - current_logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def lpo_group_loss(
    path_logprobs: torch.Tensor, path_advantages: torch.Tensor, beta: float, divergence: str
) -> torch.Tensor:
    """Listwise loss for one group of sequences (the paths of one prompt's tree).

    p = softmax over the group of the sequences' log-probabilities (the policy renormalised
    to the group); q = softmax(A/β). ``forward_kl`` is KL(q‖p), ``reverse_kl`` is KL(p‖q),
    both exact sums over the group.
    """
    log_p = torch.log_softmax(path_logprobs, dim=0)
    log_q = torch.log_softmax(path_advantages.detach() / beta, dim=0)
    if divergence == "forward_kl":
        return torch.sum(log_q.exp() * (log_q - log_p))
    if divergence == "reverse_kl":
        return torch.sum(log_p.exp() * (log_p - log_q))
    raise ValueError(f"unknown LPO divergence {divergence!r}")


def mismatch_kl(current_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(behaviour‖current) on tokens the behaviour policy sampled."""
    log_ratio = (current_logprobs - behaviour_logprobs).detach()
    return torch.exp(log_ratio) - log_ratio - 1.0


def path_sums(
    token_values: torch.Tensor, path_of_pair: torch.Tensor, target_of_pair: torch.Tensor, num_paths: int
) -> torch.Tensor:
    """Σ of the targets' values along each path (a shared token counts in every path through it)."""
    sums = torch.zeros(num_paths, dtype=token_values.dtype, device=token_values.device)
    return sums.index_add(0, path_of_pair, token_values[target_of_pair])


def policy_loss(
    settings: LossSettings, inputs: PolicyLossInputs, token_weight: float, groups: float
) -> tuple[torch.Tensor, PolicyLossStats]:
    """One tree's share of the batch loss, and its diagnostic sums.

    Token losses (``ppo_clip``, ``decoupled_ppo``) are weighted by ``loss_weights`` and
    divided by ``token_weight``, the batch's total, under "token" normalization, or by
    ``groups``, the batch's tree count, under "tree"; the group loss (``lpo``) is divided by
    ``groups``. The k3 KL to the reference policy, when given, is added the same way, scaled
    by ``kl_coef``. The diagnostic sums are weighted by ``token_weights`` either way.
    """
    current, behaviour = inputs.current_logprobs, inputs.behaviour_logprobs
    weight = inputs.token_weights
    loss_weight = weight if inputs.loss_weights is None else inputs.loss_weights
    denominator = groups if settings.normalization == "tree" else token_weight
    proximal = current.detach() if inputs.proximal_logprobs is None else inputs.proximal_logprobs
    clipped = torch.zeros_like(current, dtype=torch.bool)
    importance_weight = torch.ones_like(current)
    if settings.kind == "ppo_clip":
        token_loss, clipped = ppo_clip_token_loss(current, behaviour, inputs.advantages, settings.clip_eps)
        loss = (token_loss * loss_weight).sum() / denominator
        importance_weight = torch.exp(proximal - behaviour)
    elif settings.kind == "decoupled_ppo":
        token_loss, clipped = decoupled_ppo_token_loss(
            current, proximal, behaviour, inputs.advantages, settings.clip_eps, settings.importance_cap
        )
        loss = (token_loss * loss_weight).sum() / denominator
        importance_weight = truncated_importance_weight(proximal, behaviour, settings.importance_cap)
    elif settings.kind == "lpo":
        path_logprobs = path_sums(current, inputs.path_of_pair, inputs.target_of_pair, len(inputs.path_advantages))
        split = inputs.tree_paths or (len(inputs.path_advantages),)
        per_tree = [
            lpo_group_loss(lp, adv, settings.lpo_beta, settings.lpo_divergence)
            for lp, adv in zip(
                torch.split(path_logprobs, list(split)), torch.split(inputs.path_advantages, list(split)), strict=True
            )
        ]
        loss = torch.stack(per_tree).sum() / groups
    else:
        raise ValueError(f"unknown loss kind {settings.kind!r}")
    reference_kl = torch.zeros_like(current)
    if inputs.reference_logprobs is not None:
        reference_kl = k3_kl(current, inputs.reference_logprobs)
        loss = loss + settings.kl_coef * (reference_kl * loss_weight).sum() / denominator
    stats = PolicyLossStats(
        loss=loss.detach().double(),
        clipped=(clipped.double() * weight).sum(),
        mismatch_kl=(mismatch_kl(current, behaviour) * weight).sum().double(),
        importance_weight=(importance_weight.detach() * weight).sum().double(),
        reference_kl=(reference_kl.detach() * weight).sum().double(),
    )
    return loss, stats
