"""Rollout trees built from the TurnNode stream, with backup values and completion.

A tree is one prompt (its root) and every turn generated under it. Nodes can arrive in
any order and more than once (a publish retried, a replayed node redelivered), so adding a
node is idempotent and a node whose parent is not here yet waits in an orphan buffer until
the parent comes or its timeout passes.

A work item taken again (after its actor died, or rerouted) is a new sampling whose node
ids differ from the first run's (``protocol.messages.node_id_for``); both runs' chains
live side by side, each path from one sampling. A work item counts its chains by slot
(the sample index, ``chain_slot``): slot k is done once any sampling has ended it, so the
first run's abandoned chain neither holds the item open nor counts twice. A chain that
never ends has no reward and is left out of the tree at emission.

Backup: a terminal node is a leaf with value = reward clipped to [0, 1] and one visit.
A node's visits n_y is the number of terminal leaves below it and its value
V̂(y) = (1/n_y) sum_c n_c V̂(c), which is the mean leaf reward of its subtree (the
fraction of successful leaves when rewards are 0/1). Rewards stay real-valued in the
value; the binary *outcome* used for mixedness and V_pref is the environment's success
(``environments.base.solved``: the full reward), the quantity held-out success counts. A
threshold below it would call webshop's partial purchases (a look-alike bought with its
options unchosen scores 0.75) successes, and TRACE would look for mixed prefixes in the wrong
place.
Both are maintained incrementally: a leaf updates its ancestors' sums on arrival.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from environments.base import solved
from protocol import CompletedTree, TaskSpec, TreeNodeRecord, TurnNode, replace
from protocol.messages import chain_ends, chain_slot


@dataclass
class NodeState:
    """A received node plus the incremental statistics of its subtree."""

    node: TurnNode
    children: list[str] = field(default_factory=list)
    leaves: int = 0
    reward_sum: float = 0.0
    successes: int = 0
    # Continuations scheduled from this node that have not finished yet.
    pending_children: int = 0
    # Continuations ever scheduled from this node (stage-2 expansions).
    expansions: int = 0
    # What the outcome model keeps about the prefix ending here (allocator/learning.py).
    features: Any = None
    # The oldest policy version among the turns of the prefix ending here.
    oldest_version: int = 0
    # The shared model's cached prediction for the prefix (no evidence), and its revision.
    prediction: float = 0.5
    prediction_revision: int = -1

    @property
    def value(self) -> float:
        return self.reward_sum / self.leaves if self.leaves else 0.0

    @property
    def failures(self) -> int:
        return self.leaves - self.successes


def at_horizon(node: TurnNode, horizon: int) -> TurnNode:
    """The node as the run sees it: a chain that reached the run's turn horizon without the
    environment ending it is a finished, failed episode. Actors only know their item's turn
    allowance, which search strategies set to one turn at a time, so they leave it open.
    """
    if node.done or node.depth < horizon:
        return node
    return replace(node, done=True, reward=0.0)


@dataclass
class WorkRecord:
    """A work item issued for this tree, and what has come back for it."""

    work_id: str
    parent_id: str | None
    prefix_depth: int
    num_samples: int
    max_turns: int
    reserved_turns: int
    turns_used: int = 0
    tokens_used: int = 0
    settled: bool = False
    # Rebuilt from replayed nodes after a restart: num_samples counts the chain slots seen.
    synthesized: bool = False
    # Chain slots begun and ended, in any sampling of the item.
    started_slots: set[int | str] = field(default_factory=set)
    finished_slots: set[int | str] = field(default_factory=set)

    @property
    def finished_chains(self) -> int:
        return len(self.finished_slots)

    @property
    def finished(self) -> bool:
        return self.finished_chains >= self.num_samples

    def start_chain(self, node_id: str) -> bool:
        """Note a chain's first node; True when no sampling had begun its slot yet."""
        return _first_in(self.started_slots, chain_slot(node_id))

    def finish_chain(self, node_id: str) -> bool:
        """Note a chain's last node; True when no sampling had ended its slot yet."""
        return _first_in(self.finished_slots, chain_slot(node_id))


def _first_in(seen: set[int | str], slot: int | str) -> bool:
    if slot in seen:
        return False
    seen.add(slot)
    return True


@dataclass
class RolloutTree:
    tree_id: str
    task: TaskSpec
    step: int
    opened_at: float
    nodes: dict[str, NodeState] = field(default_factory=dict)
    first_turns: list[str] = field(default_factory=list)
    work: dict[str, WorkRecord] = field(default_factory=dict)
    # parent id -> [(node, arrived_at)] for nodes whose parent has not arrived
    orphans: dict[str, list[tuple[TurnNode, float]]] = field(default_factory=dict)
    orphan_ids: set[str] = field(default_factory=set)
    prompt_token_ids: list[int] = field(default_factory=list)

    # --- building -----------------------------------------------------------------------

    def add_work(self, record: WorkRecord) -> None:
        self.work[record.work_id] = record
        if record.parent_id is not None and record.parent_id in self.nodes:
            parent = self.nodes[record.parent_id]
            parent.pending_children += record.num_samples
            parent.expansions += record.num_samples

    def add(
        self, node: TurnNode, now: float
    ) -> tuple[Literal["accepted", "duplicate", "buffered_orphan"], list[TurnNode]]:
        """Insert ``node``; returns its outcome and every node attached as a result (in order)."""
        if node.node_id in self.nodes or node.node_id in self.orphan_ids:
            return "duplicate", []
        if node.parent_id is not None and node.parent_id not in self.nodes:
            self.orphans.setdefault(node.parent_id, []).append((node, now))
            self.orphan_ids.add(node.node_id)
            return "buffered_orphan", []
        attached: list[TurnNode] = []
        ready = [node]
        while ready:
            current = ready.pop()
            self._attach(current)
            attached.append(current)
            released = [n for n, _ in self.orphans.pop(current.node_id, [])]
            self.orphan_ids.difference_update(n.node_id for n in released)
            ready.extend(released)
        return "accepted", attached

    def _attach(self, node: TurnNode) -> None:
        state = NodeState(node, oldest_version=node.policy_version)
        self.nodes[node.node_id] = state
        if node.parent_id is not None:
            state.oldest_version = min(node.policy_version, self.nodes[node.parent_id].oldest_version)
        if node.parent_id is None:
            self.first_turns.append(node.node_id)
            if not self.prompt_token_ids:
                self.prompt_token_ids = list(node.prompt_token_ids)
        else:
            self.nodes[node.parent_id].children.append(node.node_id)
        if node.done:
            reward = min(1.0, max(0.0, float(node.reward if node.reward is not None else 0.0)))
            success = solved(reward)
            for state in self.path_states(node.node_id):
                state.leaves += 1
                state.reward_sum += reward
                state.successes += int(success)
        record = self.work.get(node.work_id)
        if record is not None:
            record.turns_used += 1
            record.tokens_used += len(node.action_token_ids)
            if self.ends_chain(node, record) and record.finish_chain(node.node_id):
                origin = record.parent_id
                if origin is not None and origin in self.nodes:
                    self.nodes[origin].pending_children = max(0, self.nodes[origin].pending_children - 1)

    @staticmethod
    def ends_chain(node: TurnNode, record: WorkRecord | None) -> bool:
        if record is None:
            return node.done
        return chain_ends(node, record.prefix_depth, record.max_turns)

    def expire_orphans(self, now: float, timeout_s: float) -> list[str]:
        """Drop orphans older than ``timeout_s``; returns their node ids."""
        dropped: list[str] = []
        for parent_id in list(self.orphans):
            kept = [(n, t) for n, t in self.orphans[parent_id] if now - t <= timeout_s]
            expired = [n.node_id for n, t in self.orphans[parent_id] if now - t > timeout_s]
            dropped.extend(expired)
            self.orphan_ids.difference_update(expired)
            if kept:
                self.orphans[parent_id] = kept
            else:
                del self.orphans[parent_id]
        return dropped

    # --- queries ------------------------------------------------------------------------

    def path_states(self, node_id: str) -> Iterator[NodeState]:
        """The node and its ancestors, deepest first."""
        current: str | None = node_id
        while current is not None:
            state = self.nodes[current]
            yield state
            current = state.node.parent_id

    def prefix_token_ids(self, node_id: str) -> list[int]:
        """Prompt ids, then action and observation ids of every turn down to ``node_id``."""
        path = list(self.path_states(node_id))[::-1]
        ids = list(self.prompt_token_ids)
        for state in path:
            ids.extend(state.node.action_token_ids)
            ids.extend(state.node.observation_token_ids)
        return ids

    @property
    def outstanding_work(self) -> int:
        return sum(1 for r in self.work.values() if not r.finished)

    @property
    def leaves(self) -> int:
        return sum(self.nodes[i].leaves for i in self.first_turns)

    @property
    def successes(self) -> int:
        return sum(self.nodes[i].successes for i in self.first_turns)

    @property
    def mixed(self) -> bool:
        """Both a successful and a failed leaf under the root: the group carries a gradient."""
        s, n = self.successes, self.leaves
        return 0 < s < n

    @property
    def mixed_branch_groups(self) -> int:
        """Sibling groups under an expanded prefix that carry a gradient: nodes with at least two
        children that reached a leaf, and both a successful and a failed leaf below them."""
        return sum(
            1
            for state in self.nodes.values()
            if 0 < state.successes < state.leaves and sum(self.nodes[c].leaves >= 1 for c in state.children) >= 2
        )

    def leaf_rewards(self) -> list[float]:
        return [min(1.0, max(0.0, float(s.node.reward or 0.0))) for s in self.nodes.values() if s.node.done]

    # --- emission -----------------------------------------------------------------------

    def to_completed(self, *, run_id: str, strategy: str, status: str, now: float) -> tuple[CompletedTree | None, int]:
        """The tree as the learner sees it, and the number of nodes left out.

        Only nodes on complete root-to-leaf paths (leaves >= 1) are kept: a chain that never
        reached a terminal turn (a lost branch, a pruned search candidate) has no reward to
        learn from. Returns ``None`` when no complete path exists.
        """
        records = [
            TreeNodeRecord(
                node_id=s.node.node_id,
                parent_id=s.node.parent_id,
                depth=s.node.depth,
                policy_version=s.node.policy_version,
                action_token_ids=list(s.node.action_token_ids),
                behaviour_logprobs=list(s.node.behaviour_logprobs),
                observation_token_ids=list(s.node.observation_token_ids),
                done=s.node.done,
                reward=s.node.reward,
            )
            for s in self._topological()
            if s.leaves >= 1
        ]
        left_out = len(self.nodes) - len(records)
        if not records:
            return None, left_out
        tree = CompletedTree(
            shard=0,
            shard_count=1,
            run_id=run_id,
            tree_id=self.tree_id,
            task=self.task,
            strategy=strategy,
            allocator_step=self.step,
            prompt_token_ids=list(self.prompt_token_ids),
            nodes=records,
            status=status,  # type: ignore[arg-type]
            budget_turns=sum(r.turns_used for r in self.work.values()) or len(self.nodes),
            step_tree_count=1,
            created_at=now,
        )
        return tree, left_out

    def _topological(self) -> Iterator[NodeState]:
        stack = list(reversed(self.first_turns))
        while stack:
            state = self.nodes[stack.pop()]
            yield state
            stack.extend(reversed(state.children))
