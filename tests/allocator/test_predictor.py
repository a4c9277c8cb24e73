import zlib

import msgpack
import numpy as np
import pytest

from allocator.core import AllocatorCore, AllocatorCoreConfig
from allocator.predictor import (
    BetaBaseline,
    PredictorConfig,
    SharedPredictor,
    auc,
    calibration_error,
)
from protocol import TurnNode, WorkItem
from tests.allocator.helpers import drive
from tests.allocator.references import PrefixView, featurize


def test_scores_against_hand_computed_values():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert calibration_error([0.25, 0.25, 0.75, 0.75], [0, 1, 1, 1], bins=2) == pytest.approx(0.5 * 0.25 + 0.5 * 0.25)


def test_featurize_is_deterministic_and_counts_structure():
    cfg = PredictorConfig(hash_bits=10)
    view = PrefixView(
        "who is the friend of ann",
        (("search friend", "error no result"),),
        1,
        4,
        env_score=0.5,
        previous_env_score=0.25,
    )
    a, b = featurize(view, cfg), featurize(view, cfg)
    np.testing.assert_array_equal(a.indices, b.indices)
    structured = dict(zip(a.indices.tolist(), a.values.tolist(), strict=True))
    base = 1 << 10
    assert structured[base + 0] == 1.0  # bias
    assert structured[base + 1] == pytest.approx(0.25)  # depth / max turns
    assert structured[base + 4] == 1.0  # last observation was an error
    assert structured[base + 5] == pytest.approx(np.log1p(6) / 3)  # words in the prompt
    assert structured[base + 6] == pytest.approx(0.5)  # the environment's progress score
    assert structured[base + 7] == pytest.approx(0.25)  # and what the last turn added
    blind = featurize(view, PredictorConfig(hash_bits=10, use_env_score=False))
    blind_structured = dict(zip(blind.indices.tolist(), blind.values.tolist(), strict=True))
    assert blind_structured[base + 6] == 0.0 and blind_structured[base + 7] == 0.0


def test_online_updates_learn_a_separating_word_and_shrink_uncertainty():
    cfg = PredictorConfig(hash_bits=10, forgetting=1.0)
    model = SharedPredictor(cfg)
    good = featurize(PrefixView("found the answer", (), 1, 4), cfg)
    bad = featurize(PrefixView("error nothing", (), 1, 4), cfg)
    before = model.predict(good)
    for _ in range(20):
        model.update([good, bad] * 8, [1.0, 0.0] * 8, [1.0] * 16)
    after_good, after_bad = model.predict(good), model.predict(bad)
    assert after_good.probability > 0.85 and after_bad.probability < 0.15
    assert after_good.logit_std < before.logit_std


def test_soft_targets_are_matched_on_average():
    cfg = PredictorConfig(hash_bits=8, forgetting=1.0, prior_precision=0.01)
    model = SharedPredictor(cfg)
    x = featurize(PrefixView("same prefix", (), 1, 4), cfg)
    for _ in range(30):
        model.update([x] * 20, [0.3] * 20, [1.0] * 20)
    assert model.predict(x).probability == pytest.approx(0.3, abs=0.03)


def test_stale_samples_are_down_weighted_then_dropped():
    model = SharedPredictor(PredictorConfig(decay=0.5, max_lag=2))
    assert [model.sample_weight(lag) for lag in range(4)] == [1.0, 0.5, 0.25, 0.0]


def test_beta_baseline_posterior_mean():
    beta = BetaBaseline()
    beta.observe("t", 3, 1)
    assert beta.predict("t") == pytest.approx(4 / 6)
    assert beta.predict("unseen") == 0.5


# --- the real multi-hop environment with a scripted stochastic policy --------------------

# Systematic skill per relation: the policy is reliable on some relations, poor on others.
SKILL = {"mentor": 0.92, "manager": 0.55, "friend": 0.85, "coach": 0.35}


def _ids(text: str) -> list[int]:
    return [zlib.crc32(w.encode()) % 5000 for w in text.split()]


class ScriptedMultihopActor:
    """Follows the expert except for prefix-dependent mistakes: a malformed action (an error
    observation, after which the turn cap makes success impossible) or an early wrong answer."""

    def __init__(self) -> None:
        from environments import multihop
        from environments.registry import make_env

        self.multihop = multihop
        self.make_env = make_env

    def rollout(self, item: WorkItem, *, actor_id, policy_version, rng, now) -> list[TurnNode]:
        nodes = []
        for sample in range(item.num_samples):
            env = self.make_env(item.task.env)
            if item.kind == "root":
                prompt = env.reset(item.task)
            else:
                env.restore(msgpack.unpackb(item.env_snapshot, raw=False))
                prompt = ""
            parent, depth = item.parent_id, item.prefix_depth
            for _ in range(item.max_turns):
                depth += 1
                question = env.question
                found = env.hops_found()
                skill = SKILL[question.path[found]] if found < question.hops else 0.9
                roll = rng.uniform()
                if roll < skill:
                    action = env.expert_action()
                elif roll < skill + (1 - skill) / 2:
                    action = "<think> not sure what to look up </think>"
                else:
                    action = self.multihop.answer_turn(question.start)
                result = env.step(action)
                node_id = f"{item.work_id}.{sample}.{depth}"
                nodes.append(
                    TurnNode(
                        run_id=item.run_id,
                        tree_id=item.tree_id,
                        node_id=node_id,
                        parent_id=parent,
                        work_id=item.work_id,
                        actor_id=actor_id,
                        task=item.task,
                        depth=depth,
                        policy_version=policy_version,
                        prompt_token_ids=_ids(prompt) if depth == 1 else [],
                        action_token_ids=_ids(action),
                        behaviour_logprobs=[-0.2] * len(_ids(action)),
                        observation_token_ids=_ids(result.observation),
                        action_text=action,
                        observation_text=result.observation,
                        env_snapshot=msgpack.packb(env.snapshot(), use_bin_type=True),
                        env_score=env.score(),
                        done=result.done,
                        reward=result.reward if result.done else None,
                        created_at=now,
                    )
                )
                parent = node_id
                if result.done:
                    break
        return nodes


def test_shared_predictor_beats_beta_baseline_on_multihop_held_out_nodes():
    from environments.registry import make_env, make_tasks

    tasks = make_tasks("multihop", "train", 48, seed=5, max_hops=3)
    questions = {t.task_id: make_env("multihop").reset(t) for t in tasks}
    cfg = AllocatorCoreConfig(
        strategy="tree-random", max_turns=5, step_budget_turns=240, batch_prompts=12, group_size=4, root_fraction=0.7
    )
    core = AllocatorCore(cfg, tasks, seed=5, prompt_text=lambda t: questions[t.task_id])
    drive(core, ScriptedMultihopActor(), steps=12, rng=np.random.default_rng(5))
    m = core.metrics()
    # Prequential: every node is scored by both models before either has learned from it.
    assert m["predictor_brier"] < m["beta_baseline_brier"] - 0.02
    assert m["predictor_auc"] > 0.75
