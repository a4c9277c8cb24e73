from __future__ import annotations

import random

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM

from learner.config import LearnerConfig, LossSection
from learner.trainer import Trainer, checkpoint_version, complete_checkpoints, latest_checkpoint
from protocol.messages import replace
from tests.learner.helpers import batches, learner_config
from tests.learner.models import build_tiny_qwen3
from tests.learner.trees import node, random_tree, tree
from tracerl.config import ConfigError, load_config


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_config_loads_with_overrides_and_checks_ranges(tmp_path):
    cfg = load_config(LearnerConfig, None, ["loss.kind=lpo", "optimiser.lr=0.0003", "training.staleness_eta=1"])
    assert (cfg.loss.kind, cfg.optimiser.lr, cfg.training.staleness_eta) == ("lpo", 0.0003, 1)
    with pytest.raises(ConfigError, match="clip_eps"):
        load_config(LearnerConfig, None, ["loss.clip_eps=1.5"])
    with pytest.raises(ConfigError, match="kind"):
        load_config(LearnerConfig, None, ["advantage.kind=gae"])
    with pytest.raises(ConfigError, match=r"field importance_cap = 0\.5: Expected `float` >= 1\.0"):
        load_config(LossSection, None, ["importance_cap=0.5"])


@pytest.mark.parametrize("loss_kind", ["decoupled_ppo", "ppo_clip", "lpo"])
def test_train_step_updates_and_packed_equals_unpacked(tiny_model_dir, loss_kind):
    batch = batches(seed=1, steps=1)[0]
    results = []
    for packing in (True, False):
        trainer = Trainer(learner_config(tiny_model_dir, packing=packing, loss_kind=loss_kind, kl_coef=0.1))
        before = weights(trainer)
        metrics = trainer.train_step(batch)
        assert metrics["skipped"] is False and trainer.policy_version == 1
        assert metrics["rejected_trees"] == 0 and metrics["trained_tokens"] > 0
        assert 0.0 < metrics["nonzero_advantage_token_share"] <= 1.0
        assert max_diff(before, weights(trainer)) > 1e-4
        results.append((metrics, weights(trainer)))
    (packed_metrics, packed), (unpacked_metrics, unpacked) = results
    assert packed_metrics["loss"] == pytest.approx(unpacked_metrics["loss"], abs=1e-5)
    assert packed_metrics["grad_norm"] == pytest.approx(unpacked_metrics["grad_norm"], rel=1e-5)
    assert packed_metrics["input_tokens"] < unpacked_metrics["input_tokens"]
    # Adam's first step moves each weight by about lr * g / (|g| + eps), which magnifies
    # round-off in coordinates whose gradient is near zero; the gradients themselves are
    # compared to 1e-5 in test_packing. Here: well below one step of lr = 1e-3.
    assert max_diff(packed, unpacked) < 2e-4


def test_rejected_and_stale_trees_are_counted_not_trained(tiny_model_dir):
    trainer = Trainer(learner_config(tiny_model_dir))
    rng = random.Random(5)
    good = random_tree(rng, "good", 600)
    from_the_future = random_tree(rng, "future", 600, version=3)
    all_pass = tree([1, 2], [node("a", None, 1, [3, 4], [], reward=1.0), node("b", None, 1, [5], [], reward=1.0)])
    metrics = trainer.train_step([all_pass])
    assert metrics["nonzero_advantage_token_share"] == 0.0  # a group with one outcome teaches nothing
    trainer = Trainer(learner_config(tiny_model_dir))
    metrics = trainer.train_step([good, from_the_future])
    assert metrics["rejected_trees"] == 1 and metrics["rejected_reasons_local"] == {"unknown_version": 1}
    assert not metrics["skipped"]
    # Three updates later (eta = 2) every token of `good` is stale: nothing to train.
    trainer.policy_version = 3
    metrics = trainer.train_step([good])
    assert metrics["skipped"] and metrics["skip_reason"] == "nothing_to_train"
    assert metrics["stale_token_share"] == 1.0 and trainer.policy_version == 3


def test_no_loss_weight_reaches_tokens_past_the_staleness_bound(tiny_model_dir):
    trainer = Trainer(learner_config(tiny_model_dir))  # staleness_eta = 2
    rng = random.Random(7)
    old, fresh = random_tree(rng, "old", 400, version=0), random_tree(rng, "fresh", 400, version=3)
    trainer.policy_version = 3
    metrics = trainer.train_step([old, fresh])
    assert metrics["stale_tokens"] > 0 and metrics["trained_tokens"] > 0
    assert metrics["trained_tokens_past_bound"] == 0
    # The check itself sees such tokens when a batch built before masking reaches the loss.
    trainer.policy_version = 0
    unmasked = trainer._prepare(old)
    trainer.policy_version = 3
    assert trainer._weight_past_bound(unmasked) == float(unmasked.batch.target_weight.sum()) > 0


def test_non_finite_loss_skips_the_step_and_leaves_weights_untouched(tiny_model_dir):
    trainer = Trainer(learner_config(tiny_model_dir, loss_kind="ppo_clip"))
    # A behaviour logprob of -1e4 makes the ratio overflow to inf: the negative-advantage
    # token's loss is +inf.
    absurd = tree(
        [1, 2, 3],
        [
            node("a", None, 1, [5, 6], [], reward=1.0, logprobs=[-1e4, -1e4]),
            node("b", None, 1, [7, 8], [], reward=0.0, logprobs=[-1e4, -1e4]),
        ],
    )
    before = weights(trainer)
    metrics = trainer.train_step([absurd])
    assert metrics["skipped"] and metrics["skip_reason"] == "non_finite"
    assert trainer.policy_version == 0
    assert len(trainer.trained_trees) == 0  # a skipped step trained no tree
    after = weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not trainer.optimiser.state_dict()["state"]  # Adam moments untouched too


def test_resume_is_bitwise_exact(tiny_model_dir, tmp_path):
    data = batches(seed=2, steps=3)
    cfg = learner_config(tiny_model_dir)
    straight = Trainer(cfg)
    for batch in data:
        straight.train_step(batch)

    first = Trainer(cfg)
    for batch in data[:2]:
        first.train_step(batch)
    first.save_checkpoint(tmp_path / "ckpt")
    first.train_step(data[1])  # diverge after saving: resume must not see this
    resumed = Trainer(cfg)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.policy_version == 2
    # The checkpoint lists exactly the trees its weights were trained on.
    assert resumed.trained_trees.ids() == [t.tree_id for batch in data[:2] for t in batch]
    resumed.train_step(data[2])

    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.policy_version == straight.policy_version == 3
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["ckpt"]  # no temp dirs left


def test_checkpoint_overwrite_is_atomic_swap(tiny_model_dir, tmp_path):
    trainer = Trainer(learner_config(tiny_model_dir))
    trainer.save_checkpoint(tmp_path / "ckpt")
    trainer.train_step(batches(seed=3, steps=1)[0])
    trainer.save_checkpoint(tmp_path / "ckpt")
    fresh = Trainer(learner_config(tiny_model_dir))
    fresh.load_checkpoint(tmp_path / "ckpt")
    assert fresh.policy_version == 1
    assert max_diff(weights(fresh), weights(trainer)) == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_exported_weights_load_as_an_hf_model_with_untied_head(tmp_path):
    tied_dir = tmp_path / "tied"
    build_tiny_qwen3(tied_dir, seed=4)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tied_dir)
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tied_dir)  # a tied model, like many released checkpoints
    trainer = Trainer(learner_config(tied_dir))
    trainer.train_step(batches(seed=4, steps=1)[0])

    state = safetensors.torch.load(trainer.export_weights())
    live = weights(trainer)
    assert state.keys() == live.keys() and "lm_head.weight" in state
    assert all(torch.equal(state[k], live[k]) for k in state)
    assert not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])

    out = trainer.export_model_dir(tmp_path / "export")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert reloaded.config.tie_word_embeddings is False
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        expected = trainer.accelerator.unwrap_model(trainer.model)(input_ids=ids).logits
        assert (reloaded(input_ids=ids).logits - expected).abs().max().item() < 1e-6


def test_a_newer_version_is_accepted_once_the_learner_reaches_it(tiny_model_dir):
    trainer = Trainer(learner_config(tiny_model_dir))
    batch = batches(seed=6, steps=1, trees_per_step=2)[0]
    bumped = [replace(batch[0], nodes=[replace(n, policy_version=1) for n in batch[0].nodes]), batch[1]]
    assert trainer.train_step(bumped)["rejected_trees"] == 1
    assert trainer.train_step(bumped)["rejected_trees"] == 0  # version 1 is now known


def test_rolling_checkpoints_keep_the_newest(tiny_model_dir, tmp_path):
    base = learner_config(tiny_model_dir)
    cfg = replace(
        base,
        training=replace(
            base.training, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every_steps=2, keep_checkpoints=2
        ),
    )
    trainer = Trainer(cfg)
    saved = []
    for (completed,) in batches(seed=8, steps=6, trees_per_step=1):
        fresh = replace(completed, nodes=[replace(n, policy_version=trainer.policy_version) for n in completed.nodes])
        assert not trainer.train_step([fresh])["skipped"]
        saved.append(trainer.save_rolling_checkpoint())
    assert [p.name if p else None for p in saved] == [None, "v00000002", None, "v00000004", None, "v00000006"]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["v00000004", "v00000006"]
    assert latest_checkpoint(tmp_path / "ck") == tmp_path / "ck" / "v00000006"
    assert [checkpoint_version(p) for p in complete_checkpoints(tmp_path / "ck")] == [4, 6]
    assert latest_checkpoint(tmp_path / "nothing_here") is None


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="model_dir"):
        Trainer(learner_config(tmp_path / "absent"))


def test_trains_and_exports_the_shared_tokenizer_model(random_model_dir, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    vocab = AutoConfig.from_pretrained(random_model_dir).vocab_size
    trainer = Trainer(learner_config(random_model_dir))
    rng = random.Random(11)
    assert not trainer.train_step([random_tree(rng, f"t{i}", vocab) for i in range(2)])["skipped"]
    out = trainer.export_model_dir(tmp_path / "v1")
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.encode("hello", add_special_tokens=False)


def _with_training(cfg: LearnerConfig, **changes) -> LearnerConfig:
    return replace(cfg, training=replace(cfg.training, **changes))


def test_two_updates_per_batch_equal_two_steps_when_clipping_against_behaviour(tiny_model_dir):
    # ppo_clip's ratio is current/behaviour, so the frozen proximal policy plays no part.
    batch = batches(seed=12, steps=1, trees_per_step=2)[0]
    base = learner_config(tiny_model_dir, loss_kind="ppo_clip")
    stepwise = Trainer(base)
    stepwise.train_step(batch)
    stepwise.train_step(batch)
    epochs = Trainer(_with_training(base, updates_per_batch=2))
    metrics = epochs.train_step(batch)
    assert metrics["updates_applied"] == 2 and epochs.policy_version == 1
    a, b = weights(stepwise), weights(epochs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_decoupled_ppo_clips_against_the_frozen_proximal_policy(tiny_model_dir):
    batch = batches(seed=13, steps=1, trees_per_step=2)[0]
    cfg = _with_training(learner_config(tiny_model_dir, clip_eps=0.01), updates_per_batch=3)
    metrics = Trainer(cfg).train_step(batch)
    assert metrics["clip_fraction"] == 0.0  # first update: current == proximal
    assert metrics["clip_fraction_last_update"] > 0.0  # the policy moved, the proximal did not


def test_tree_normalization_makes_the_batch_loss_the_mean_of_each_trees_own(tiny_model_dir):
    batch = batches(seed=3, steps=1)[0]
    alone = [Trainer(learner_config(tiny_model_dir, normalization="tree")).train_step([tree])["loss"] for tree in batch]
    packed = learner_config(tiny_model_dir, normalization="tree", max_tokens_per_forward=1 << 16)
    together = Trainer(packed).train_step(batch)["loss"]
    assert together == pytest.approx(sum(alone) / len(alone), abs=1e-6)
    by_token = Trainer(learner_config(tiny_model_dir)).train_step(batch)
    token_counts = [Trainer(learner_config(tiny_model_dir)).train_step([tree])["trained_tokens"] for tree in batch]
    # Token normalization weighs each tree's mean by its share of the tokens instead.
    weighted = sum(a * n for a, n in zip(alone, token_counts, strict=True)) / sum(token_counts)
    assert by_token["loss"] == pytest.approx(weighted, abs=1e-6)
    assert len(set(token_counts)) > 1 and abs(weighted - together) > 1e-6
