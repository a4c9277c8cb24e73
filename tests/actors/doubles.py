"""Test doubles: a scripted turn generator and a tiny deterministic environment."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actors.config import EngineSettings
from actors.engine import Generation
from actors.weights import WEIGHTS_FILE
from environments.base import Environment, EnvironmentError_, StepResult
from protocol.messages import SamplingSpec, TaskSpec, WorkItem


class CountingEnvironment(Environment):
    """Done when the action contains "answer"; reward 1 iff it answered after >= 2 searches."""

    name = "counting"
    stop_strings = ("</search>", "</answer>")
    max_turns = 4

    def __init__(self) -> None:
        self.actions: list[str] = []

    def reset(self, task: TaskSpec) -> str:
        if task.task_id.startswith("missing"):
            raise EnvironmentError_(f"unknown task {task.task_id}")
        self.actions = []
        return f"question : count {task.task_id}"

    def step(self, action_text: str) -> StepResult:
        self.actions.append(action_text)
        if "answer" in action_text:
            return StepResult("<information> done </information>", True, 1.0 if len(self.actions) >= 3 else 0.0)
        return StepResult(f"<information> seen {len(self.actions)} </information>", False, 0.0)

    def snapshot(self) -> dict[str, Any]:
        return {"actions": list(self.actions)}

    def restore(self, state: dict[str, Any]) -> None:
        actions = state.get("actions")
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise EnvironmentError_("corrupt snapshot")
        self.actions = list(actions)

    def score(self) -> float:
        return min(1.0, len(self.actions) / 3)

    def expert_action(self) -> str:
        return "<search> x </search>" if len(self.actions) < 2 else "<answer> y </answer>"


class ScriptedEngine:
    """Searches until the context holds ``answer_after`` searches, then answers; sleeps so chains interleave."""

    def __init__(self, tokenizer: Any, answer_after: int = 2, policy_version: int = 0) -> None:
        self.tokenizer = tokenizer
        self.answer_after = answer_after
        self.policy_version = policy_version
        self.calls: list[tuple[list[int], int | None]] = []
        self.concurrent = 0
        self.max_concurrent = 0

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingSpec,
        *,
        stop_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Generation:
        self.calls.append((list(prompt_ids), seed))
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        await asyncio.sleep(0.01)
        self.concurrent -= 1
        text = "<answer> y </answer>" if self._turns_in(prompt_ids) >= self.answer_after else "<search> x </search>"
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return Generation(
            token_ids=ids,
            behaviour_logprobs=[-0.5] * len(ids),
            text=self.tokenizer.decode(ids, skip_special_tokens=False),
            num_prompt_tokens=len(prompt_ids),
            num_cached_tokens=0,
            finish_reason="stop",
            policy_version=self.policy_version,
        )

    def _turns_in(self, prompt_ids: Sequence[int]) -> int:
        close_search = self.tokenizer.encode("</search>", add_special_tokens=False)
        return sum(1 for t in prompt_ids if [t] == close_search)


class ReloadingEngine(ScriptedEngine):
    """A ScriptedEngine with the rest of the interface ``ActorService`` drives, whose reload
    reads the weights file it is handed the way vLLM would, and records what it read."""

    def __init__(self, tokenizer: Any, max_model_len: int = 1024) -> None:
        super().__init__(tokenizer)
        self.settings = EngineSettings(max_model_len=max_model_len)
        self.is_dead = False
        self.tokens_generated = self.turns_generated = self.prompt_tokens = self.cached_tokens = 0
        self.inflight_turns = 0
        # (policy version, sha256 of the weights file read) for every reload, in order.
        self.loaded: list[tuple[int, str]] = []

    async def reload_weights(self, weights_dir: str | Path, policy_version: int) -> float:
        blob = (Path(weights_dir) / WEIGHTS_FILE).read_bytes()
        self.loaded.append((policy_version, hashlib.sha256(blob).hexdigest()))
        self.policy_version = policy_version
        return 0.0


def make_item(kind: str = "root", **overrides: Any) -> WorkItem:
    fields: dict[str, Any] = {
        "run_id": "t",
        "work_id": "w1",
        "tree_id": "tree1",
        "kind": kind,
        "task": TaskSpec(env="counting", task_id="a"),
        "num_samples": 3,
        "parent_id": None,
        "prefix_depth": 0,
        "prefix_token_ids": [],
        "env_snapshot": b"",
        "sampling": SamplingSpec(seed=7),
        "max_turns": 4,
        "min_policy_version": 0,
        "issued_at": 0.0,
    }
    fields.update(overrides)
    return WorkItem(shard=0, **fields)
