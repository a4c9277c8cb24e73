"""Activations a training forward recomputes in backward instead of keeping.

At long packed contexts the memory of the ``lean`` training path is set by what each
decoder layer keeps for its backward, not by attention: the chunked attention keeps only
q, k, v, its output and the log-sum-exp, but a gated MLP keeps four [L, intermediate]
tensors (the gate and up projections, the activation and their product), about half of
everything a forward stores. Recomputing a module runs its forward once more in backward
from its input alone (``torch.utils.checkpoint``, non-reentrant, so DDP and FSDP see the
same gradients); the gradients are the same arithmetic, so parity is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from learner.config import RecomputeKind
from learner.sharding import decoder_layers


def recompute_in_backward(model: torch.nn.Module, kind: RecomputeKind) -> None:
    """Make ``model``'s gradient-enabled forwards recompute ``kind`` in backward (in place).

    Parameter names and the state dict are unchanged, so checkpoints and published weights
    do not see it. Forwards without gradients run as before.
    """
    if kind == "none":
        return
    layers = decoder_layers(model)
    if kind == "layers":
        if not all(isinstance(layer, GradientCheckpointingLayer) for layer in layers):
            raise ValueError(f"the decoder layers of {type(model).__name__} do not support gradient checkpointing")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
        return
    mlps = [getattr(layer, "mlp", None) for layer in layers]
    modules = [mlp for mlp in mlps if isinstance(mlp, torch.nn.Module)]
    if len(modules) != len(layers):
        raise ValueError(f"lean_recompute 'mlp' needs an .mlp in every decoder layer of {type(model).__name__}")
    for mlp in modules:
        mlp.forward = _recomputed_in_backward(mlp.forward)


def _recomputed_in_backward(forward: Callable[..., Any]) -> Callable[..., Any]:
    def forward_recomputed_in_backward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return forward_recomputed_in_backward
