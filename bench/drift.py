"""How far training moved the weights: the Euclidean distance between two HF model directories.

The learner's optimiser is Adam, whose update per parameter is about ``lr`` whatever the
gradient's size, so two strategies that train for the same number of steps move the
weights about equally far even when one of them feeds the learner far more signal (a larger
gradient norm). The distance makes that visible in a learning table next to the gradient
norm: what an allocation can change is then the direction of the steps, not their length.
"""

from __future__ import annotations

import math
from pathlib import Path

from safetensors import safe_open


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    """Each tensor name of ``model_dir``'s safetensors files (sharded or not) and its file."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    where: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle is not a Mapping)
                where[name] = path
    return where


def weight_distance(before: Path, after: Path) -> float:
    """‖after − before‖₂ over the tensors both directories hold, summed in float64, one tensor
    in memory at a time; NaN when they share no tensor."""
    first, second = _tensor_files(Path(before)), _tensor_files(Path(after))
    shared = sorted(first.keys() & second.keys())
    if not shared:
        return math.nan
    total = 0.0
    for name in shared:
        with safe_open(str(first[name]), framework="pt") as a, safe_open(str(second[name]), framework="pt") as b:
            difference = b.get_tensor(name).double() - a.get_tensor(name).double()
            total += float((difference * difference).sum())
    return math.sqrt(total)
