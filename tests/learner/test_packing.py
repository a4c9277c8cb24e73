from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from learner.advantages import node_advantages
from learner.losses import lpo_group_loss, ppo_clip_token_loss
from learner.packing import packed_batch, target_logprobs, unpacked_batch
from learner.sequences import prepare_tree
from learner.tree_layout import dense_mask
from protocol.messages import replace
from tests.learner.helpers import path_logprob_sums
from tests.learner.models import TINY_VOCAB
from tests.learner.trees import node, packed_token_count, random_tree, tree


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")


def test_packed_layout_of_a_small_tree():
    t = prepare_tree(
        tree(
            [1, 2],
            [
                node("a", None, 1, [10, 11], [20]),
                node("b", "a", 2, [12], [], reward=1.0),
                node("c", "a", 2, [13], [], reward=0.0),
            ],
        ),
        learner_version=0,
        staleness_eta=0,
    )
    batch = packed_batch(t)
    assert batch.input_ids.tolist() == [[1, 2, 10, 11, 20, 12, 13]]
    # c restarts at the position after a's observation, like b
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 5]]
    mask = dense_mask(batch.layout).int().tolist()
    assert mask[6] == [1, 1, 1, 1, 1, 0, 1]  # c sees prompt, a and itself, not b
    assert mask[5] == [1, 1, 1, 1, 1, 1, 0]
    # targets: a's two tokens (on both paths), then b, then c; each predicted from its predecessor
    assert batch.target_token.tolist() == [10, 11, 12, 13]
    assert batch.target_predictor.tolist() == [1, 2, 4, 4]
    assert batch.target_weight.tolist() == [2.0, 2.0, 1.0, 1.0]
    assert sorted(zip(batch.path_of_pair.tolist(), batch.target_of_pair.tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 3),
    ]
    unpacked = unpacked_batch(t)
    assert unpacked.input_tokens == 12 and batch.input_tokens == 7


def _loss(model, batch, advantages, kind):
    current = target_logprobs(model, batch)
    if kind == "lpo":
        path_adv = torch.tensor(advantages)[batch.path_leaf]
        return lpo_group_loss(path_logprob_sums(current, batch), path_adv, beta=0.7, divergence="reverse_kl")
    adv = torch.tensor(advantages, dtype=torch.float32)[batch.target_node]
    token_loss, _ = ppo_clip_token_loss(current, batch.behaviour_logprobs, adv, 0.2)
    return (token_loss * batch.target_weight).sum() / batch.target_weight.sum()


@pytest.mark.parametrize("kind", ["ppo_clip", "lpo"])
def test_packed_loss_and_gradients_equal_unpacked(model, kind):
    rng = random.Random(7)
    for i in range(3):
        completed = random_tree(rng, f"t{i}", TINY_VOCAB, chains=3, max_turns=3, branch_prob=0.8, version=1)
        if i == 2:  # depth-1 turns from an older policy: stale under eta = 0, out of the loss
            older = [replace(n, policy_version=0) if n.depth == 1 else n for n in completed.nodes]
            completed = replace(completed, nodes=older)
        t = prepare_tree(completed, learner_version=1, staleness_eta=0)
        assert any(t.stale) == (i == 2)
        advantages = node_advantages("tree_grpo", t.parent, t.reward)
        grads = []
        losses = []
        for batch in (packed_batch(t), unpacked_batch(t)):
            model.zero_grad()
            loss = _loss(model, batch, advantages, kind)
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert losses[0] == pytest.approx(losses[1], abs=1e-5)
        assert (grads[0] - grads[1]).abs().max().item() < 1e-5
        assert grads[0].abs().max().item() > 1e-4  # a real gradient, not two zeros


def test_packed_logprobs_equal_unpacked_and_save_tokens(model):
    rng = random.Random(3)
    t = prepare_tree(random_tree(rng, "t", TINY_VOCAB, chains=4, branch_prob=1.0), 0, 0)
    packed, unpacked = packed_batch(t), unpacked_batch(t)
    with torch.no_grad():
        sums_packed = path_logprob_sums(target_logprobs(model, packed), packed)
        sums_unpacked = path_logprob_sums(target_logprobs(model, unpacked), unpacked)
    assert (sums_packed - sums_unpacked).abs().max().item() < 1e-4
    assert packed.input_tokens == packed_token_count(t) < unpacked.input_tokens == t.path_token_counts()[2]
