"""Policy losses, importance weights and diagnostics (pure torch, no module state).

All per-token functions take flat 1-D tensors over the trained action tokens and return
per-token values; the trainer weights them (a shared node's tokens count once per path
through it) and divides by the global token weight, so the batch loss is a token mean.
Logprobs named ``behaviour`` come from the actor that sampled the token, ``proximal`` from
the learner's policy before this update, ``current`` carry the gradient.
"""

from __future__ import annotations

import torch


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
