"""A ground-truth simulator of multi-turn rollouts, pure and seeded.

Every prefix has a known success probability p. A prompt starts at p0 (a latent
difficulty drawn around its category's mean); each turn draws the next p from
Beta(c p, c (1 - p)), whose mean is p, so p is a martingale and equals the true
V(prefix) = P(success | prefix) at every node. A finished chain succeeds with probability
equal to its last p. The observation text carries a noisy hint of the move (as a search
result would), so a predictor that reads the prefix can track p; the prompt text names the
category, so a shared predictor can generalise to prompts it has not seen.

The simulated actor turns a WorkItem into TurnNodes exactly as a real actor would: node
ids derived from work id, sample and turn; ``env_snapshot`` holds the true p so that a
branch continues from the parent's state; ``env_score`` is p plus noise (a heuristic score
for the search strategies).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protocol import TaskSpec, TurnNode, WorkItem


@dataclass(frozen=True)
class SimulatorConfig:
    num_prompts: int = 256
    # Mean logit of p0 per category; prompts are spread over categories evenly.
    category_logits: tuple[float, ...] = (-4.0, -2.0, -0.5, 0.5, 2.0, 4.0)
    prompt_logit_std: float = 0.5
    # Beta concentration of the per-turn move; smaller means larger moves.
    concentration: float = 6.0
    max_turns: int = 4
    # Probability that a turn ends the episode early (0 gives fixed-length chains).
    early_stop: float = 0.0
    score_noise: float = 0.1
    tokens_per_action: int = 8

    def __post_init__(self) -> None:
        if self.num_prompts < 1 or self.max_turns < 1 or not self.category_logits:
            raise ValueError("simulator needs prompts, categories and turns")
        if self.concentration <= 0:
            raise ValueError("concentration must be > 0")
        if not 0 <= self.early_stop < 1:
            raise ValueError("early_stop must be in [0, 1)")


@dataclass(frozen=True)
class SimPrompt:
    task: TaskSpec
    p0: float


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def make_prompts(config: SimulatorConfig, rng: np.random.Generator) -> list[SimPrompt]:
    prompts = []
    for i in range(config.num_prompts):
        category = i % len(config.category_logits)
        p0 = _sigmoid(config.category_logits[category] + rng.normal(0.0, config.prompt_logit_std))
        task = TaskSpec("sim", f"sim-{i}", {"question": f"question kind{category} about item{i}"})
        prompts.append(SimPrompt(task, p0))
    return prompts


def _pack_state(p: float) -> bytes:
    return struct.pack("<d", p)


def _unpack_state(snapshot: bytes) -> float:
    (p,) = struct.unpack("<d", snapshot)
    return float(p)


def _hint(before: float, after: float) -> str:
    move = after - before
    if move > 0.08:
        return "result found relevant fact"
    if move < -0.08:
        return "error no result for that query"
    return "result partial match"


class SimulatedActor:
    """Rolls out WorkItems against the ground truth. Holds only the prompts' p0 table."""

    def __init__(self, config: SimulatorConfig, prompts: Sequence[SimPrompt]) -> None:
        self.config = config
        self.p0 = {p.task.task_id: p.p0 for p in prompts}

    def rollout(
        self, item: WorkItem, *, actor_id: str, policy_version: int, rng: np.random.Generator, now: float
    ) -> list[TurnNode]:
        cfg = self.config
        start = self.p0[item.task.task_id] if item.kind == "root" else _unpack_state(item.env_snapshot)
        nodes: list[TurnNode] = []
        for sample in range(item.num_samples):
            p, parent, depth = start, item.parent_id, item.prefix_depth
            for _ in range(item.max_turns):
                depth += 1
                a = max(1e-6, cfg.concentration * p)
                b = max(1e-6, cfg.concentration * (1.0 - p))
                new_p = float(rng.beta(a, b))
                done = depth >= cfg.max_turns or rng.uniform() < cfg.early_stop
                reward = float(rng.uniform() < new_p) if done else None
                # Token entropy is highest where the outcome is most uncertain.
                spread = 0.2 + 2.0 * new_p * (1.0 - new_p)
                logprobs = (-rng.exponential(spread, size=cfg.tokens_per_action)).tolist()
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
                        prompt_token_ids=[1, 2, 3] if depth == 1 else [],
                        action_token_ids=list(range(10, 10 + cfg.tokens_per_action)),
                        behaviour_logprobs=logprobs,
                        observation_token_ids=[] if done else [4, 5],
                        action_text=f"search step{depth}",
                        observation_text="" if done else _hint(p, new_p),
                        env_snapshot=_pack_state(new_p),
                        env_score=float(np.clip(new_p + rng.normal(0.0, cfg.score_noise), 0.0, 1.0)),
                        done=done,
                        reward=reward,
                        created_at=now,
                    )
                )
                p, parent = new_p, node_id
                if done:
                    break
        return nodes
