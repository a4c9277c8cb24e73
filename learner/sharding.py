"""Fully sharded data parallelism (PyTorch FSDP2) for the learner's model, and its full state.

Applied with ``torch.distributed.fsdp.fully_shard`` directly rather than through Accelerate's
FSDP plugin: Accelerate 1.x turns the plugin on only for accelerator devices (its CPU path
silently falls back to DDP), while FSDP2 itself runs on the CPU with gloo, so the one code
path that runs with NCCL on GPUs is also the one the two-process CPU test checks.

Every decoder layer is its own shard unit (its parameters are gathered for its forward and
backward only), then the root, which holds the embeddings, the final norm and the head.
A sharded model's parameters are DTensors; gathering the whole model or optimiser state is
a collective that every rank must join.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

# Gathered in full onto rank 0's CPU (the others get an empty dict): what export and checkpoints need.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
# Loaded from a full state every rank has read from the checkpoint.
_LOAD = StateDictOptions(full_state_dict=True)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (``model.model.layers`` for Qwen3 and Llama)."""
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers to shard")
    return list(layers)


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` in place over the default process group: each decoder layer, then the root."""
    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on rank 0's CPU, empty elsewhere (collective)."""
    return get_model_state_dict(model, options=_GATHER)  # type: ignore[return-value]


def full_optimiser_state(model: torch.nn.Module, optimiser: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimiser state keyed by parameter name, on rank 0's CPU (collective)."""
    return get_optimizer_state_dict(model, optimiser, options=_GATHER)


def load_full_state(
    model: torch.nn.Module, optimiser: torch.optim.Optimizer, weights: dict[str, torch.Tensor], optim: dict[str, Any]
) -> None:
    """Each rank keeps its shard of a full model and optimiser state (collective)."""
    set_model_state_dict(model, weights, options=_LOAD)  # type: ignore[arg-type]
    set_optimizer_state_dict(model, optimiser, optim_state_dict=optim, options=_LOAD)


def parameter_names(model: torch.nn.Module) -> list[str]:
    """Parameter names in the order the optimiser was given them (``model.parameters()``)."""
    return [name for name, _ in model.named_parameters()]


def optimiser_state_by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A gathered optimiser state, keyed by parameter name, in ``Optimizer.state_dict``'s own form
    (parameters numbered in order): a checkpoint reads the same whether its learner was sharded."""
    index = {name: i for i, name in enumerate(names)}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]} for group in state["param_groups"]],
    }


def optimiser_state_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of ``optimiser_state_by_index``: what a sharded optimiser loads."""
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]],
    }


def local_value(tensor: torch.Tensor) -> float:
    """A reduced scalar as a float, whether a plain tensor or a replicated DTensor."""
    full = getattr(tensor, "full_tensor", None)
    return float(full() if full is not None else tensor)
