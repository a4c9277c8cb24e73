"""Held-out success probes issued through the same actors while training runs.

The run's headline curve is held-out success against samples spent, greedy and sampled
side by side (PLATFORM-NOTES: greedy can sit far above sampled, and RL that only
sharpens moves the two differently). A probe is one root rollout per held-out task and
decoding mode; its nodes never reach the trainer, and its turns are not charged to the
training budget (the probe is the same for every strategy, so comparisons stay fair).

Pure bookkeeping: the shell publishes what ``plan`` returns and feeds back probe nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean

import msgspec

from environments.base import solved
from protocol import TaskSpec, TurnNode, WorkItem
from tracerl.config import AtLeast0, Config

from .tree import at_horizon

PROBE_PREFIX = "heldout-"
MODES = {"greedy": 0.0, "sampled": 1.0}


def is_probe_tree(tree_id: str) -> bool:
    return tree_id.startswith(PROBE_PREFIX)


class HeldoutConfig(Config, frozen=True):
    tasks: AtLeast0 = 64
    # Probe at policy versions 0, every, 2*every, ...; 0 disables probing.
    every_versions: AtLeast0 = 5
    max_tokens_per_turn: int = 48
    max_turns: int = 5
    # Keywords of the environment's task generator for the held-out tasks: its difficulty
    # knobs, or a real dataset's held-out file.
    options: dict[str, int | float | str | bool] = msgspec.field(default_factory=dict)


@dataclass
class _Probe:
    version: int
    issued_at: float
    outstanding: dict[str, str]  # tree id -> mode
    rewards: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})


@dataclass(frozen=True)
class HeldoutResult:
    policy_version: int
    greedy_success: float
    sampled_success: float
    tasks: int
    seconds: float


class HeldoutProbes:
    def __init__(self, config: HeldoutConfig, tasks: list[TaskSpec], run_id: str) -> None:
        self.config = config
        self.tasks = tasks[: config.tasks]
        self.run_id = run_id
        self._probes: dict[int, _Probe] = {}
        self._tree_to_version: dict[str, int] = {}
        self._results: list[HeldoutResult] = []

    def due(self, version: int) -> bool:
        every = self.config.every_versions
        return bool(every and self.tasks) and version % every == 0 and version not in self._probes

    def plan(self, version: int, now: float) -> list[WorkItem]:
        items: list[WorkItem] = []
        outstanding: dict[str, str] = {}
        for mode, temperature in MODES.items():
            for index, task in enumerate(self.tasks):
                tree_id = f"{PROBE_PREFIX}v{version}-{mode}-{index}"
                outstanding[tree_id] = mode
                self._tree_to_version[tree_id] = version
                items.append(
                    WorkItem.single_episode(
                        run_id=self.run_id,
                        tree_id=tree_id,
                        task=task,
                        temperature=temperature,
                        seed=index,
                        max_tokens_per_turn=self.config.max_tokens_per_turn,
                        max_turns=self.config.max_turns,
                        min_policy_version=version,
                        issued_at=now,
                    )
                )
        self._probes[version] = _Probe(version, now, outstanding)
        return items

    def on_node(self, node: TurnNode, now: float) -> None:
        version = self._tree_to_version.get(node.tree_id)
        probe = self._probes.get(version) if version is not None else None
        if probe is None or node.tree_id not in probe.outstanding:
            return
        node = at_horizon(node, self.config.max_turns)
        if not node.done:
            return
        mode = probe.outstanding.pop(node.tree_id)
        probe.rewards[mode].append(float(node.reward or 0.0))
        if not probe.outstanding:
            # Success as `tracerl eval` counts it, so the live curve and the before/after
            # evaluations agree on graded environments too (a mean webshop reward ran ~0.4 above).
            success = {m: fmean(solved(r) for r in rewards) if rewards else 0.0 for m, rewards in probe.rewards.items()}
            self._results.append(
                HeldoutResult(
                    policy_version=probe.version,
                    greedy_success=success["greedy"],
                    sampled_success=success["sampled"],
                    tasks=len(self.tasks),
                    seconds=now - probe.issued_at,
                )
            )

    def pop_results(self) -> list[HeldoutResult]:
        results, self._results = self._results, []
        return results
