"""Parity of the tree attention paths with the dense-mask SDPA reference, several trees per forward."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from learner.advantages import node_advantages
from learner.config import LearnerConfig, LossSection, ModelSection, OptimiserSection, TrainingSection
from learner.losses import lpo_group_loss, ppo_clip_token_loss
from learner.packing import (
    merge_packed,
    packed_batch,
    target_logprobs,
    unpacked_batch,
)
from learner.recompute import recompute_in_backward
from learner.sequences import prepare_tree
from learner.trainer import Trainer
from learner.tree_attention import (
    TREE_ATTENTION,
    flex_padded_length,
    flex_tree_attention,
    flex_tree_mask,
    lean_tree_attention,
    lean_tree_mask,
)
from learner.tree_layout import TreeLayout, concatenate, dense_mask, tree_segments
from tests.learner.helpers import batches, path_logprob_sums
from tests.learner.models import TINY_VOCAB
from tests.learner.test_tree_layout import random_preorder_parents
from tests.learner.trees import random_tree


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=TREE_ATTENTION)


def training_trees(seed: int, count: int):
    rng = random.Random(seed)
    return [
        prepare_tree(random_tree(rng, f"t{i}", TINY_VOCAB, chains=3, max_turns=3, branch_prob=0.8), 0, 0)
        for i in range(count)
    ]


def several_tree_layout(seed: int):
    rng = random.Random(seed)
    layouts = []
    for _ in range(4):
        nodes = rng.randint(2, 8)
        lengths = [rng.randint(0, 40) for _ in range(nodes)]
        layouts.append(tree_segments(lengths, random_preorder_parents(rng, nodes), rng.randint(1, 30)))
    return concatenate(layouts)


def test_flex_lengths_come_from_four_steps_per_doubling():
    assert [flex_padded_length(n) for n in (1, 128, 129, 1000, 1025, 4096, 4097, 16000)] == [
        128,
        128,
        256,
        1024,
        1280,
        4096,
        5120,
        16384,
    ]


def test_lean_attention_values_and_gradients_equal_dense_sdpa():
    layout = several_tree_layout(1)
    length = layout.length
    torch.manual_seed(0)
    q = torch.randn(1, 4, length, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, length, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, length, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, 4, length, 8, dtype=torch.float64)
    reference = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=dense_mask(layout)[None, None], enable_gqa=True
    )
    reference_grads = torch.autograd.grad((reference * upstream).sum(), (q, k, v))
    for chunk in (1, 13, 64, length):
        out = lean_tree_attention(q, k, v, lean_tree_mask(layout, chunk), None)
        grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))
        assert (out - reference).abs().max().item() < 1e-12
        for mine, theirs in zip(grads, reference_grads, strict=True):
            assert (mine - theirs).abs().max().item() < 1e-12
            assert theirs.abs().max().item() > 1e-3


def test_flex_attention_equals_dense_sdpa():
    layout = several_tree_layout(2)
    torch.manual_seed(1)
    q, k, v = (
        torch.randn(1, 4, layout.length, 16),
        torch.randn(1, 2, layout.length, 16),
        torch.randn(1, 2, layout.length, 16),
    )
    with torch.no_grad():
        reference = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=dense_mask(layout)[None, None], enable_gqa=True
        )
        out = flex_tree_attention(q, k, v, flex_tree_mask(layout), None)
    assert (out - reference).abs().max().item() < 1e-5


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="FlexAttention has a backward on CUDA only (scripts/gpu-check.sh)"
)
def test_flex_attention_gradients_equal_dense_sdpa_on_cuda():
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu_layout = several_tree_layout(3)
    # On the device, as the trainer's batches are (packing.to_device): the mask is built there.
    layout = TreeLayout(cpu_layout.segment.cuda(), cpu_layout.segment_end.cuda(), cpu_layout.segments)
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, heads, layout.length, 16, device="cuda", requires_grad=True) for heads in (4, 2, 2))
    upstream = torch.randn(1, 4, layout.length, 16, device="cuda")
    reference = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=dense_mask(layout)[None, None], enable_gqa=True
    )
    reference_grads = torch.autograd.grad((reference * upstream).sum(), (q, k, v))
    out = flex_tree_attention(q, k, v, flex_tree_mask(layout), None)
    grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))
    assert (out - reference).abs().max().item() < 1e-5
    for mine, theirs in zip(grads, reference_grads, strict=True):
        assert (mine - theirs).abs().max().item() < 1e-5
        assert theirs.abs().max().item() > 1e-3


def test_every_path_gives_the_dense_logprobs_with_several_trees_in_one_forward(model):
    trees = training_trees(3, 4)
    per_tree = [packed_batch(t) for t in trees]
    merged = merge_packed(per_tree)
    assert merged.input_ids.shape[1] == sum(b.input_tokens for b in per_tree)
    with torch.no_grad():
        reference = torch.cat([target_logprobs(model, b, "dense") for b in per_tree])
        unpacked = torch.cat([target_logprobs(model, unpacked_batch(t)) for t in trees])
        merged_dense = target_logprobs(model, merged, "dense")
        flex = target_logprobs(model, merged, "flex")
    lean = target_logprobs(model, merged, "lean", lean_chunk=32)  # with gradients: the chunked path
    assert lean.requires_grad
    # unpacked rows list targets path by path; compare path sums, which do not depend on order
    sums_unpacked = torch.cat(
        [
            path_logprob_sums(lp, unpacked_batch(t))
            for lp, t in zip(unpacked.split(_targets_unpacked(trees)), trees, strict=True)
        ]
    )
    assert (path_logprob_sums(reference, merged) - sums_unpacked).abs().max().item() < 1e-4
    for name, logprobs in (("merged dense", merged_dense), ("flex", flex), ("lean", lean.detach())):
        assert (logprobs - reference).abs().max().item() < 1e-5, name


def _targets_unpacked(trees) -> list[int]:
    return [unpacked_batch(t).num_targets for t in trees]


def _tree_loss(logprobs, batch, tree, kind, total_weight):
    """One tree's share of the batch loss, from its own targets (packed or unpacked order)."""
    advantages = torch.tensor(node_advantages("tree_grpo", tree.parent, tree.reward), dtype=torch.float32)
    if kind == "lpo":
        return lpo_group_loss(path_logprob_sums(logprobs, batch), advantages[batch.path_leaf], 0.7, "reverse_kl")
    token_loss, _ = ppo_clip_token_loss(logprobs, batch.behaviour_logprobs, advantages[batch.target_node], 0.2)
    return (token_loss * batch.target_weight).sum() / total_weight


@pytest.mark.parametrize("kind", ["ppo_clip", "lpo"])
def test_lean_training_gradients_equal_the_unpacked_path_for_several_trees(model, kind):
    trees = training_trees(5, 4)
    total_weight = sum(unpacked_batch(t).num_targets for t in trees)

    def loss_and_gradients(forward):
        model.zero_grad()
        loss = forward()
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    def unpacked():  # one row per path, one forward per tree, dense SDPA
        losses = []
        for t in trees:
            batch = unpacked_batch(t)
            losses.append(_tree_loss(target_logprobs(model, batch), batch, t, kind, total_weight))
        return torch.stack(losses).sum()

    def lean():  # every tree in one packed forward through the chunked path
        per_tree = [packed_batch(t) for t in trees]
        logprobs = target_logprobs(model, merge_packed(per_tree), "lean", lean_chunk=16)
        pieces = logprobs.split([b.num_targets for b in per_tree])
        return torch.stack(
            [_tree_loss(lp, b, t, kind, total_weight) for lp, b, t in zip(pieces, per_tree, trees, strict=True)]
        ).sum()

    reference_loss, reference = loss_and_gradients(unpacked)
    lean_loss, lean_gradients = loss_and_gradients(lean)
    assert lean_loss == pytest.approx(reference_loss, abs=1e-5)
    assert (lean_gradients - reference).abs().max().item() < 1e-5
    assert reference.abs().max().item() > 1e-4  # a real gradient, not two zeros


def _lean_loss(model, trees, kind="ppo_clip"):
    """Every tree in one packed forward through the chunked path; the loss of _tree_loss over them."""
    total_weight = sum(unpacked_batch(t).num_targets for t in trees)
    per_tree = [packed_batch(t) for t in trees]
    logprobs = target_logprobs(model, merge_packed(per_tree), "lean", lean_chunk=16)
    pieces = logprobs.split([b.num_targets for b in per_tree])
    return torch.stack(
        [_tree_loss(lp, b, t, kind, total_weight) for lp, b, t in zip(pieces, per_tree, trees, strict=True)]
    ).sum()


def _saved_for_backward(model, trees) -> list[torch.Tensor]:
    """The tensors autograd keeps from the lean forward of ``trees`` (one entry per storage)."""
    saved: dict[int, torch.Tensor] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved.setdefault(tensor.untyped_storage().data_ptr(), tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        _lean_loss(model, trees)
    return list(saved.values())


@pytest.mark.parametrize("recompute", ["mlp", "layers"])
def test_lean_training_with_recompute_keeps_the_unpacked_gradients_and_stores_less(model, tiny_model_dir, recompute):
    trees = training_trees(5, 4)
    total_weight = sum(unpacked_batch(t).num_targets for t in trees)
    model.zero_grad()
    reference_loss = torch.stack(
        [
            _tree_loss(target_logprobs(model, unpacked_batch(t)), unpacked_batch(t), t, "ppo_clip", total_weight)
            for t in trees
        ]
    ).sum()
    reference_loss.backward()
    reference = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()

    recomputing = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=TREE_ATTENTION
    ).train()
    stored_before = sum(t.untyped_storage().nbytes() for t in _saved_for_backward(recomputing, trees))
    recompute_in_backward(recomputing, recompute)
    saved = _saved_for_backward(recomputing, trees)
    loss = _lean_loss(recomputing, trees)
    loss.backward()
    gradients = torch.cat([p.grad.flatten() for p in recomputing.parameters()])

    assert loss.item() == pytest.approx(reference_loss.item(), abs=1e-5)
    assert (gradients - reference).abs().max().item() < 1e-5
    assert reference.abs().max().item() > 1e-4
    config, length = recomputing.config, merge_packed([packed_batch(t) for t in trees]).input_tokens
    stored_after = sum(t.untyped_storage().nbytes() for t in saved)
    if recompute == "mlp":
        # Per layer the gated MLP kept gate, up, act(gate) and their product ([L, intermediate]
        # each) and its three weights; now only what recomputes them is kept.
        per_layer = 4 * length * config.intermediate_size + 3 * config.hidden_size * config.intermediate_size
        assert stored_before - stored_after == config.num_hidden_layers * per_layer * 4
    else:
        # Whole layers come back in backward: no per-head attention tensor and no MLP activation stays.
        assert not [t.shape for t in saved if t.dim() == 4 or t.shape[-1] == config.intermediate_size]
        assert stored_after < stored_before / 3


def test_trainer_with_lean_attention_and_packed_forwards_matches_dense(tiny_model_dir):
    step = batches(seed=11, steps=1, trees_per_step=4)[0]
    results = []
    for attention, budget in (("dense", 0), ("lean", 10**6)):
        config = LearnerConfig(
            model=ModelSection(
                model_dir=str(tiny_model_dir), attention=attention, max_tokens_per_forward=budget, lean_chunk_tokens=32
            ),
            optimiser=OptimiserSection(lr=1e-3, max_grad_norm=1.0),
            # Two updates use proximal logprobs, and the KL term a reference model: both run without gradients.
            loss=LossSection(kind="decoupled_ppo", kl_coef=0.1),
            training=TrainingSection(staleness_eta=2, updates_per_batch=2),
        )
        trainer = Trainer(config)
        metrics = trainer.train_step(step)
        weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        results.append((metrics, weights))
    (dense_metrics, dense_weights), (lean_metrics, lean_weights) = results
    assert dense_metrics["forwards"] == 4 and lean_metrics["forwards"] == 1
    assert lean_metrics["input_tokens"] == dense_metrics["input_tokens"]
    for key in ("loss", "grad_norm", "reference_kl", "importance_weight_mean"):
        assert lean_metrics[key] == pytest.approx(dense_metrics[key], abs=1e-5), key
    # Adam divides by the gradient's root mean square, so where a gradient is near zero a
    # rounding difference between chunked and dense attention moves a weight by a visible part
    # of the learning rate (1.9e-5 on an AVX-512 Xeon, under 1e-5 on an EPYC). A wrong mask or
    # chunk moves many weights by the whole rate; a tenth of it separates the two.
    assert (lean_weights - dense_weights).abs().max().item() < 0.1 * config.optimiser.lr


def test_flex_training_on_the_cpu_is_refused(tiny_model_dir):
    config = LearnerConfig(model=ModelSection(model_dir=str(tiny_model_dir), attention="flex"))
    with pytest.raises(ValueError, match="lean"):
        Trainer(config)


def test_an_unknown_lean_recompute_is_refused():
    from tracerl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"field model\.lean_recompute = 'attention': Invalid enum value"):
        load_config(LearnerConfig, None, ["model.lean_recompute=attention"])
