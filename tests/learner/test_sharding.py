"""The sharded learner's pure parts; the sharding itself is checked on two gloo processes
(tests/learner/test_two_processes.py, layout "fsdp")."""

import pytest
import torch

from learner.sharding import (
    decoder_layers,
    local_value,
    optimiser_state_by_index,
    optimiser_state_by_name,
    parameter_names,
)


def test_optimiser_state_by_name_becomes_torchs_own_numbering_and_back():
    names = ["embed", "layer.0.w", "head"]
    by_name = {
        "state": {"head": {"step": 3}, "embed": {"step": 1}},
        "param_groups": [{"lr": 0.1, "params": ["embed", "layer.0.w"]}, {"lr": 0.2, "params": ["head"]}],
    }
    by_index = optimiser_state_by_index(by_name, names)
    assert by_index == {
        "state": {2: {"step": 3}, 0: {"step": 1}},
        "param_groups": [{"lr": 0.1, "params": [0, 1]}, {"lr": 0.2, "params": [2]}],
    }
    assert optimiser_state_by_name(by_index, names) == by_name


def test_the_numbering_is_the_one_torch_gives_the_model_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    optimiser = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimiser.step()
    own = optimiser.state_dict()
    names = parameter_names(model)
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    by_name = optimiser_state_by_name(own, names)
    assert by_name["state"]["1.bias"]["exp_avg"].shape == (1,)
    optimiser.load_state_dict(optimiser_state_by_index(by_name, names))  # torch accepts it back


def test_a_model_without_decoder_layers_is_refused():
    with pytest.raises(ValueError, match=r"no model\.layers"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_local_value_of_a_plain_tensor():
    assert local_value(torch.tensor(2.5)) == 2.5
