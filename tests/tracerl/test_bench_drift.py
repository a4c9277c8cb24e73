import math

import pytest
import torch
from safetensors.torch import save_file

from bench.drift import weight_distance


def test_the_distance_is_the_euclidean_norm_over_every_shared_tensor_and_shard(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    after.mkdir()
    save_file({"a": torch.zeros(2, 2), "b": torch.ones(3)}, str(before / "model.safetensors"))
    # The trained model is sharded differently and holds one tensor the base does not.
    save_file({"a": torch.full((2, 2), 0.5)}, str(after / "model-00001-of-00002.safetensors"))
    save_file(
        {"b": torch.tensor([1.0, 3.0, 1.0]), "extra": torch.ones(5)}, str(after / "model-00002-of-00002.safetensors")
    )
    # a moved by 0.5 in 4 entries (1.0 squared), b by 2 in one (4.0): sqrt(5).
    assert weight_distance(before, after) == pytest.approx(math.sqrt(5.0))
    assert weight_distance(before, before) == 0.0


def test_bf16_weights_are_compared_in_float64(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    after.mkdir()
    save_file({"w": torch.full((4,), 1.0, dtype=torch.bfloat16)}, str(before / "model.safetensors"))
    save_file({"w": torch.full((4,), 1.0078125, dtype=torch.bfloat16)}, str(after / "model.safetensors"))
    assert weight_distance(before, after) == pytest.approx(2 * 0.0078125)


def test_no_shared_tensor_is_nan_and_no_weights_is_an_error_naming_the_directory(tmp_path):
    before, after, empty = tmp_path / "before", tmp_path / "after", tmp_path / "empty"
    for d in (before, after, empty):
        d.mkdir()
    save_file({"a": torch.zeros(1)}, str(before / "model.safetensors"))
    save_file({"b": torch.zeros(1)}, str(after / "model.safetensors"))
    assert math.isnan(weight_distance(before, after))
    with pytest.raises(FileNotFoundError, match="empty: no"):
        weight_distance(before, empty)
