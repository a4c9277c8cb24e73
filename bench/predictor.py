"""`tracerl bench predictor`: every success predictor against a Monte-Carlo ground truth.

For each policy version (the base model, then each ``--model`` loaded into the same vLLM
engine in place, as an actor loads a new version):

1. trees: a root group of ``group_size`` rollouts for each of ``prompts`` train prompts at
   the run's sampling, fed node by node into ``RolloutTree``s and the ``OutcomeModel`` as the
   allocator's core does;
2. training: the first half of the trees teach the OutcomeModel in steps of ``batch_prompts``
   trees, as the allocator does: each root is a recorded decision, each tree gets
   ``train_branches`` continuations of ``branch_k`` from prefixes drawn at random (recorded
   decisions too, so the concentrations per depth are fitted from continuations, as TRACE's
   stage 2 makes them), and the step closes with ``learn_from_tree`` then
   ``evaluate_then_train``;
3. diagnostic set: ``prefixes`` prefixes of the second half's trees, roots and turn prefixes
   spread over depths. Every forecast is what the allocator would know when stage 2 plans: the
   tree holds its root group and has not taught anything yet (a root's own evidence is its
   tree's leaves, known once the tree closes);
4. ground truth: ``continuations`` continuations of each prefix on the same engine and version,
   from its node's environment snapshot and prefix tokens, like the allocator's branches;
5. scores of every predictor on the same outcomes (bench/predictor_scoring.py), overall and
   per depth, recorded in bench/results/predictor.{md,json}.

Per-request seeds are a GPU feature of the engine, so on the CPU two runs draw different
rollouts from the same settings.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from allocator.core import AllocatorCoreConfig
from allocator.learning import OutcomeModel, TrainingBatch
from allocator.step import tree_id_for, work_id_for
from allocator.tree import NodeState, RolloutTree, WorkRecord, at_horizon
from bench.learning import json_safe
from bench.predictor_scoring import (
    DESCRIPTIONS,
    PREDICTORS,
    DepthRates,
    DiagnosticPrefix,
    Forecast,
    by_depth_markdown,
    num,
    overall_markdown,
    predictor_table,
    select_prefixes,
)
from bench.runs import write_results
from environments.base import solved
from modelkit.eval import CONCURRENT_EPISODES
from protocol import SamplingSpec, TaskSpec, TurnNode, WorkItem
from tracerl.logs import get_logger

log = get_logger(__name__)

RUN_ID = "bench-predictor"
#: The one sampling name of this bench's engine runs: node ids need one, and nothing is redelivered here.
SAMPLING = "bench"
RESULTS_NAME = "predictor"


class BenchInputError(ValueError):
    """A bad option or model directory, found before any engine starts; the message is one line."""


@dataclass(frozen=True)
class PredictorBenchOptions:
    prompts: int = 240
    prefixes: int = 320
    continuations: int = 16
    train_branches: int = 2
    seed: int = 0
    # Chains the engine is given at once (vLLM batches them).
    chains_in_flight: int = CONCURRENT_EPISODES
    # Later policy versions, after the base model: HF model directories or learner checkpoints.
    models: tuple[str, ...] = ()
    results_dir: str | None = None

    def __post_init__(self) -> None:
        if self.prompts < 4:
            raise BenchInputError("--prompts must be >= 4: half train the predictor, half give the diagnostic set")
        if self.prefixes < 1:
            raise BenchInputError("--prefixes must be >= 1")
        if self.continuations < 2 or self.continuations % 2:
            raise BenchInputError("--continuations must be even and >= 2: the oracle is scored by halves")
        if self.train_branches < 0:
            raise BenchInputError("--train-branches must be >= 0")
        if self.chains_in_flight < 1:
            raise BenchInputError("--chains-in-flight must be >= 1")


def is_prefix(state: NodeState, max_turns: int) -> bool:
    """A turn prefix the allocator may continue: unfinished, under the horizon, with a leaf below."""
    return not state.node.done and state.node.depth < max_turns and state.leaves >= 1


def check_later_version(base_dir: Path, directory: Path) -> None:
    """A later version is loaded into the base model's engine: it needs weights, and the base
    model's architecture and tokenizer where it names its own."""
    if not (directory / "model.safetensors").is_file():
        raise BenchInputError(f"{directory} holds no model.safetensors")
    for name in ("config.json", "tokenizer.json"):
        own = directory / name
        if own.is_file() and json.loads(own.read_text()) != json.loads((base_dir / name).read_text()):
            raise BenchInputError(f"{directory}/{name} differs from the base model's ({base_dir}): not a version of it")


@dataclass
class VersionBench:
    """One policy version's trees, OutcomeModel and continuations."""

    engine: Any
    env_name: str
    core: AllocatorCoreConfig
    options: PredictorBenchOptions
    version: int
    label: str
    prompt_text: Callable[[TaskSpec], str]
    model: OutcomeModel = field(init=False)
    rng: np.random.Generator = field(init=False)
    work_seq: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = OutcomeModel(
            self.core.predictor,
            max_turns=self.core.max_turns,
            prompt_stats_decay=self.core.prompt_stats_decay,
            dps_stickiness=self.core.dps_stickiness,
            prompt_text=self.prompt_text,
        )
        self.rng = np.random.default_rng((self.options.seed, self.version))

    # ------------------------------------------------------------------ work items

    def work_item(self, tree: RolloutTree, samples: int, state: NodeState | None) -> WorkItem:
        """Root rollouts of the tree's task, or continuations of ``state``'s prefix, to the horizon."""
        self.work_seq += 1
        depth = state.node.depth if state is not None else 0
        base = self.core.sampling
        seed = int(self.rng.integers(0, 2**31 - 1))
        return WorkItem(
            shard=0,
            run_id=RUN_ID,
            work_id=work_id_for(tree.tree_id, self.work_seq),
            tree_id=tree.tree_id,
            kind="root" if state is None else "branch",
            task=tree.task,
            num_samples=samples,
            parent_id=None if state is None else state.node.node_id,
            prefix_depth=depth,
            prefix_token_ids=[] if state is None else tree.prefix_token_ids(state.node.node_id),
            env_snapshot=b"" if state is None else state.node.env_snapshot,
            sampling=SamplingSpec(base.temperature, base.top_p, base.max_tokens_per_turn, seed),
            max_turns=self.core.max_turns - depth,
            min_policy_version=0,
            issued_at=time.time(),
        )

    def grow(self, tree: RolloutTree, samples: int, state: NodeState | None) -> WorkItem:
        """A work item whose nodes join ``tree``, registered with it as the core registers its work."""
        item = self.work_item(tree, samples, state)
        tree.add_work(
            WorkRecord(
                item.work_id, item.parent_id, item.prefix_depth, samples, item.max_turns, samples * item.max_turns
            )
        )
        return item

    def feed(self, tree: RolloutTree, node: TurnNode) -> None:
        """As the allocator's core takes a node: the run's horizon applied, then features set."""
        _, attached = tree.add(at_horizon(node, self.core.max_turns), time.time())
        for current in attached:
            self.model.observe_node(tree, tree.nodes[current.node_id])

    async def run(self, items: Sequence[WorkItem], on_node: Callable[[WorkItem, TurnNode], None], what: str) -> None:
        """Every item on the engine, ``chains_in_flight`` chains at a time; a progress bar of
        finished rollouts."""
        from tqdm import tqdm

        from actors.episode import EpisodeContext, run_work_item
        from environments import make_env

        if not items:
            return
        started = time.monotonic()
        ctx = EpisodeContext(actor_id=RUN_ID, max_model_len=self.engine.settings.max_model_len, sampling=SAMPLING)
        widest = max(item.num_samples for item in items)
        slots = asyncio.Semaphore(max(1, self.options.chains_in_flight // widest))
        total = sum(item.num_samples for item in items)
        bar = tqdm(total=total, desc=f"v{self.version} {what}", unit="rollout", file=sys.stderr)

        async def one(item: WorkItem) -> None:
            async with slots:
                async for node in run_work_item(self.engine, lambda: make_env(self.env_name), item, ctx):
                    on_node(item, node)
                    if item.ends_chain(node):
                        bar.update(1)

        with bar:
            await asyncio.gather(*(one(item) for item in items))
        self.seconds[what] = self.seconds.get(what, 0.0) + time.monotonic() - started

    # ------------------------------------------------------------------ phases

    async def grow_roots(self, tasks: Sequence[TaskSpec]) -> list[RolloutTree]:
        batch = self.core.batch_prompts
        trees = [
            RolloutTree(tree_id_for(i // batch, i % batch, f"v{self.version}-"), task, i // batch, time.time())
            for i, task in enumerate(tasks)
        ]
        by_id = {tree.tree_id: tree for tree in trees}
        items = []
        for tree in trees:
            self.model.open_tree(tree.tree_id, tree.task)
            items.append(self.grow(tree, self.core.group_size, None))
        await self.run(items, lambda item, node: self.feed(by_id[item.tree_id], node), "root groups")
        return trees

    async def train(self, trees: Sequence[RolloutTree]) -> DepthRates:
        """The allocator's steps over ``trees``; the depth-only reference from what they hold."""
        batch = self.core.batch_prompts
        for start in range(0, len(trees), batch):
            step = trees[start : start + batch]
            by_id = {tree.tree_id: tree for tree in step}
            items = []
            for tree in step:
                # The root group was rolled out before; what the model believed is taken now,
                # at the step it belongs to, as the core takes it when it issues the roots.
                (root_work,) = tree.work
                self.model.record_decision(tree, root_work, None)
                prefixes = [s for s in tree.nodes.values() if is_prefix(s, self.core.max_turns)]
                count = min(self.options.train_branches, len(prefixes))
                for index in self.rng.choice(len(prefixes), size=count, replace=False):
                    state = prefixes[int(index)]
                    items.append(self.grow(tree, self.core.branch_k, state))
                    self.model.record_decision(tree, items[-1].work_id, state)
            await self.run(
                items,
                lambda item, node: self.feed(by_id[item.tree_id], node),  # noqa: B023 - awaited in this iteration
                "training branches",
            )
            training = TrainingBatch()
            for tree in step:
                self.model.learn_from_tree(tree, training, self.version)
            self.model.evaluate_then_train(training)
        rows = [(0, tree.successes, tree.leaves) for tree in trees]
        rows += [
            (s.node.depth, s.successes, s.leaves)
            for tree in trees
            for s in tree.nodes.values()
            if is_prefix(s, self.core.max_turns)
        ]
        return DepthRates.pooled(rows)

    def forecasts(
        self, chosen: Sequence[tuple[RolloutTree, NodeState | None]], trees: Sequence[RolloutTree], rates: DepthRates
    ) -> list[dict[str, Forecast]]:
        """Every forecaster's belief about each chosen prefix. The trees' prompts are new to the
        model: a root's shared prediction is its prediction before its tree is learnt."""
        model = self.model
        prefixes = [(tree, state) for tree, state in chosen if state is not None]
        posterior, _ = model.predict_prefixes(prefixes)
        strength = model.prefix_strengths(prefixes)
        by_state = {
            id(state): (float(p), float(s)) for (_, state), p, s in zip(prefixes, posterior, strength, strict=True)
        }
        tasks = [tree.task for tree in trees]
        shared_root = dict(zip((t.task_id for t in tasks), model.predict_roots(tasks), strict=True))
        # The allocator learns a closed tree's leaves into the prompt's counts: a root's evidence.
        for tree in trees:
            model.learn_from_tree(tree, TrainingBatch(), self.version)
        root = dict(
            zip(
                (t.task_id for t in tasks),
                zip(model.predict_roots(tasks), model.root_strengths(tasks), strict=True),
                strict=True,
            )
        )
        out = []
        for tree, state in chosen:
            task_id = tree.task.task_id
            depth = 0 if state is None else state.node.depth
            kappa = model.concentrations.concentration(depth)
            stats = model.beta.stats[task_id]
            beta_strength = model.beta.a0 + model.beta.b0 + stats.successes + stats.failures
            beta = Forecast(model.beta.predict(task_id), beta_strength)
            if state is None:
                ours, shared = Forecast(*root[task_id]), Forecast(shared_root[task_id], kappa)
            else:
                ours, shared = Forecast(*by_state[id(state)]), Forecast(state.prediction, kappa)
            out.append({"ours": ours, "shared": shared, "beta": beta, "depth": Forecast(rates.rate(depth))})
        return out

    async def continue_prefixes(self, chosen: Sequence[tuple[RolloutTree, NodeState | None]]) -> list[list[int]]:
        """Outcomes of ``continuations`` new chains from each prefix, by sample index; the trees
        are left as they were."""
        from protocol.messages import node_id_for

        n = self.options.continuations
        outcomes = [[-1] * n for _ in chosen]
        where: dict[str, tuple[int, int]] = {}
        items = []
        for index, (tree, state) in enumerate(chosen):
            item = self.work_item(tree, n, state)
            items.append(item)
            for sample in range(n):
                for depth in range(item.prefix_depth + 1, item.prefix_depth + item.max_turns + 1):
                    where[node_id_for(item.work_id, SAMPLING, sample, depth)] = (index, sample)

        def record(item: WorkItem, node: TurnNode) -> None:
            if item.ends_chain(node):
                index, sample = where[node.node_id]
                outcomes[index][sample] = int(solved(float(at_horizon(node, self.core.max_turns).reward or 0.0)))

        await self.run(items, record, "continuations")
        return outcomes

    async def measure(self, tasks: Sequence[TaskSpec]) -> dict[str, Any]:
        started = time.monotonic()
        turns_before, tokens_before = self.engine.turns_generated, self.engine.tokens_generated
        trees = await self.grow_roots(tasks)
        half = len(trees) // 2
        rates = await self.train(trees[:half])
        # The allocator's own prequential scores over the training half, as `make run` reports them.
        training_scores = {k: v for k, v in self.model.scores().items() if "depth" not in k}
        diagnostic = [tree for tree in trees[half:] if tree.leaves]
        candidates: list[tuple[RolloutTree, NodeState | None]] = []
        for tree in diagnostic:
            candidates.append((tree, None))
            candidates += [(tree, s) for s in tree.nodes.values() if is_prefix(s, self.core.max_turns)]
        depths = [0 if state is None else state.node.depth for _, state in candidates]
        chosen = [candidates[i] for i in select_prefixes(depths, self.options.prefixes, self.options.seed)]
        forecasts = self.forecasts(chosen, diagnostic, rates)
        outcomes = await self.continue_prefixes(chosen)
        prefixes = [
            DiagnosticPrefix(tree.task.task_id, 0 if state is None else state.node.depth, tuple(ys), f)
            for (tree, state), ys, f in zip(chosen, outcomes, forecasts, strict=True)
        ]
        root_leaves = sum(tree.leaves for tree in trees)
        return {
            "label": self.label,
            "policy_version": self.version,
            "seconds": round(time.monotonic() - started, 1),
            "phase_seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "generated_turns": self.engine.turns_generated - turns_before,
            "generated_tokens": self.engine.tokens_generated - tokens_before,
            "trees": {
                "train": half,
                "diagnostic": len(diagnostic),
                "root_group_success": sum(t.successes for t in trees) / root_leaves if root_leaves else None,
                "candidate_prefixes_by_depth": {d: depths.count(d) for d in sorted(set(depths))},
            },
            "model": {
                "samples_seen": self.model.predictor.samples_seen,
                "revision": self.model.revision,
                "concentrations": {d: self.model.concentrations.concentration(d) for d in range(self.core.max_turns)},
                "depth_rates": dict(rates.rates),
                "training_scores": training_scores,
            },
            "scores": predictor_table(prefixes),
            "prefixes": [
                {
                    "task_id": p.task_id,
                    "depth": p.depth,
                    "outcomes": list(p.outcomes),
                    "forecasts": {name: [f.success, f.strength] for name, f in p.forecasts.items()},
                }
                for p in prefixes
            ],
        }


def draw_prompts(pool: Sequence[TaskSpec], count: int, seed: int) -> list[TaskSpec]:
    """``count`` distinct prompts of the train pool, at random."""
    if count > len(pool):
        raise BenchInputError(f"--prompts {count} is more than the train pool's {len(pool)} tasks")
    return [pool[int(i)] for i in np.random.default_rng(seed).choice(len(pool), size=count, replace=False)]


async def measure_versions(
    base_dir: Path,
    versions: Sequence[tuple[int, str, Path]],
    tasks: Sequence[TaskSpec],
    up: Any,
    options: PredictorBenchOptions,
) -> list[dict[str, Any]]:
    """Each version measured in turn on one engine that starts on ``base_dir``."""
    from actors.engine import PolicyEngine
    from allocator.service import PromptTexts

    engine = await PolicyEngine.start(base_dir, up.actor.engine)
    prompt_text = PromptTexts()
    results = []
    try:
        for version, label, directory in versions:
            if version:
                await engine.reload_weights(directory, version)
            allocator = up.allocator
            bench = VersionBench(engine, allocator.tasks.env, allocator.core, options, version, label, prompt_text)
            results.append(await bench.measure(tasks))
            log.info("predictor_bench_version_done", label=label, seconds=results[-1]["seconds"])
    finally:
        engine.shutdown()
    return results


def bench_settings(options: PredictorBenchOptions, up: Any, base_dir: Path) -> dict[str, Any]:
    core = up.allocator.core
    return {
        "base_model": str(base_dir),
        "models": list(options.models),
        "env": up.allocator.tasks.env,
        "train_pool": up.allocator.tasks.train_tasks,
        "prompts": options.prompts,
        "prefixes": options.prefixes,
        "continuations": options.continuations,
        "train_branches": options.train_branches,
        "seed": options.seed,
        "group_size": core.group_size,
        "batch_prompts": core.batch_prompts,
        "branch_k": core.branch_k,
        "max_turns": core.max_turns,
        "sampling": msgspec.structs.asdict(core.sampling) | {"seed": None},
        "predictor": msgspec.structs.asdict(core.predictor),
    }


def training_line(scores: dict[str, Any]) -> str:
    """The allocator's own scores over the training half, as `make run` reports them."""
    return (
        f"The allocator's scores over the training half: at its decisions AUC {num(scores.get('predictor_auc'))}, "
        f"Brier / Beta {num(scores.get('predictor_brier_vs_beta'))}; every node, leaving one leaf out, AUC "
        f"{num(scores.get('predictor_loo_auc'))}, within a prompt {num(scores.get('predictor_loo_auc_within_prompt'))}."
    )


def predictor_markdown(payload: dict[str, Any]) -> str:
    settings = payload["settings"]
    shown = {k: v for k, v in settings.items() if k not in ("predictor", "sampling")}
    lines = [
        "# Success predictors against Monte-Carlo ground truth",
        "",
        "Settings: "
        + ", ".join(f"`{k}={v}`" for k, v in shown.items())
        + f"; wall time {payload['wall_seconds']:.0f} s.",
        "",
        "Predictors: " + "; ".join(f"**{name}**: {DESCRIPTIONS[name]}" for name in PREDICTORS) + ".",
        "AUCs count only pairs of continuations of different prefixes (bench/predictor_scoring.py).",
    ]
    for run in payload["versions"]:
        trees, scored = run["trees"], run["scores"]
        lines += [
            "",
            f"## {run['label']}",
            "",
            f"{trees['train']} training trees, {trees['diagnostic']} diagnostic trees, root-group success "
            f"{num(trees['root_group_success'])}; {scored['overall']['predictors']['oracle']['prefixes']} prefixes; "
            f"{run['generated_turns']} turns in {run['seconds']:.0f} s; fitted concentrations by depth "
            + ", ".join(f"{d}: {k:.2f}" for d, k in run["model"]["concentrations"].items())
            + ".",
            "",
            overall_markdown(scored["overall"]),
            "",
            training_line(run["model"]["training_scores"]),
        ]
        for metric, title, pairs in (
            ("auc", "AUC", "prefix_pairs"),
            ("auc_within_prompt", "AUC within a prompt", "prefix_pairs_within_prompt"),
            ("brier", "Brier", None),
        ):
            lines += ["", f"{title} by depth:", "", by_depth_markdown(scored["by_depth"], metric, pairs)]
    return "\n".join(lines) + "\n"


def run_predictor_bench(options: PredictorBenchOptions, up: Any) -> dict[str, Any]:
    """Measure, record bench/results/predictor.{md,json} (or in ``options.results_dir``) and
    return what was recorded."""
    from environments.registry import make_tasks
    from tracerl.up import resolve_model_dir

    started = time.monotonic()
    base_dir = Path(resolve_model_dir(up))
    later = [Path(m) for m in options.models]
    for directory in later:
        check_later_version(base_dir, directory)
    tasks_config = up.allocator.tasks
    pool = make_tasks(tasks_config.env, "train", tasks_config.train_tasks, tasks_config.seed, **tasks_config.options)
    tasks = draw_prompts(pool, options.prompts, options.seed)
    versions = [(0, f"base model ({base_dir})", base_dir)]
    versions += [(i, str(directory), directory) for i, directory in enumerate(later, start=1)]
    runs = asyncio.run(measure_versions(base_dir, versions, tasks, up, options))
    payload = {
        "settings": bench_settings(options, up, base_dir),
        "wall_seconds": round(time.monotonic() - started, 1),
        "versions": runs,
    }
    # As it reads back from the file: depths as text keys, NaN as null.
    payload = json.loads(json.dumps(json_safe(payload)))
    markdown = predictor_markdown(payload)
    write_results(RESULTS_NAME, payload, markdown, Path(options.results_dir) if options.results_dir else None)
    print(markdown)
    return payload
