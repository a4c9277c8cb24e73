"""The learner's training shell around Accelerate: forward, loss, update, checkpoints, export.

Everything numerical is delegated to the pure modules (``sequences``, ``advantages``,
``packing``, ``losses``); this class owns the model, the optimiser, the policy version and
the files.

Several processes. Every rank calls ``train_step`` with the same batch (``share_batch``
broadcasts rank 0's); rank r trains on trees r, r + W, r + 2W, ... and Accelerate's DDP
averages gradients over the W ranks. Each rank's loss is scaled by W / (global token
weight), so the average of the ranks' gradients is the gradient of the one-process
token mean. The same code runs with NCCL on GPUs.

With ``parallel.strategy: fsdp`` the model is sharded instead (``learner.sharding``): every
forward then gathers each layer from all ranks, so every rank runs as many forwards and
backwards as the busiest one (idle ones on a dummy token), and the full weights are
gathered to rank 0 at the end of every step, while all ranks are in ``train_step``, so
that rank 0 alone can export and publish them.

The bytes ``export_weights`` produces are what every transport carries (``weightsync``): the
object store, or a broadcast from rank 0 to the actors in its group (``weights.transport``),
and the checkpoint format.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from learner.advantages import node_advantages
from learner.config import LearnerConfig
from learner.ledger import TrainedTrees
from learner.losses import PolicyLossInputs, loss_token_weights, policy_loss
from learner.packing import ForwardBatch, forward_batch, forward_groups, merge_packed, target_logprobs, to_device
from learner.recompute import recompute_in_backward
from learner.sequences import TrainingTree, TreeRejected, prepare_tree
from learner.sharding import (
    full_model_state,
    full_optimiser_state,
    load_full_state,
    local_value,
    optimiser_state_by_index,
    optimiser_state_by_name,
    parameter_names,
    shard_model,
)
from learner.tree_attention import TREE_ATTENTION
from protocol.messages import CompletedTree
from tracerl.logs import get_logger

log = get_logger("learner.trainer")

WEIGHTS_FILE = "model.safetensors"
OPTIMISER_FILE = "optimiser.pt"
STATE_FILE = "trainer_state.json"
# The ids of the trees the checkpointed weights were trained on (``learner.ledger``).
TRAINED_TREES_FILE = "trained_trees.json"
# Tokenizer and generation files travel with an exported model dir so that vLLM can load it.
_SIDECAR_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class _PreparedTree:
    tree: TrainingTree
    batch: ForwardBatch
    target_advantage: torch.Tensor
    path_advantage: torch.Tensor
    # The targets' weights in the loss (learner.losses.loss_token_weights).
    loss_weight: torch.Tensor


@dataclass(frozen=True)
class _Forward:
    """One model forward: one tree, or several packed trees (``model.max_tokens_per_forward``)."""

    batch: ForwardBatch
    target_advantage: torch.Tensor
    path_advantage: torch.Tensor
    loss_weight: torch.Tensor


def _forwards(prepared: list[_PreparedTree], packing: bool, max_tokens: int) -> list[_Forward]:
    groups = forward_groups([p.batch.input_tokens for p in prepared], max_tokens if packing else 0)
    out = []
    for group in groups:
        members = [prepared[i] for i in group]
        out.append(
            _Forward(
                merge_packed([p.batch for p in members]) if len(members) > 1 else members[0].batch,
                torch.cat([p.target_advantage for p in members]),
                torch.cat([p.path_advantage for p in members]),
                torch.cat([p.loss_weight for p in members]),
            )
        )
    return out


def _untie_embeddings(model: PreTrainedModel) -> bool:
    """Give lm_head its own copy: vLLM's in-place reload mishandles tied parameters."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    # Module attributes type as Tensor | Module; these two are the embedding matrices.
    embed_weight = cast(torch.Tensor, embed.weight)
    if head is None or cast(torch.Tensor, head.weight).data_ptr() != embed_weight.data_ptr():
        model.config.tie_word_embeddings = False
        return False
    head.weight = torch.nn.Parameter(embed_weight.detach().clone())
    model.config.tie_word_embeddings = False
    return True


def _atomic_dir(target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _commit_dir(tmp: Path, target: Path) -> None:
    """Swap ``tmp`` into place; a reader sees the old or the new directory, never a mix."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def checkpoint_root(config: LearnerConfig) -> Path:
    return Path(config.training.checkpoint_dir or Path(config.run.run_dir) / "checkpoints")


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Every complete checkpoint under ``root``, oldest first (temp and swap dirs start with a dot)."""
    return sorted(p for p in Path(root).glob("v*") if (p / STATE_FILE).is_file())


def latest_checkpoint(root: str | Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def checkpoint_version(checkpoint: str | Path) -> int:
    """The policy version a checkpoint holds."""
    return int(json.loads((Path(checkpoint) / STATE_FILE).read_text())["policy_version"])


class Trainer:
    def __init__(self, config: LearnerConfig, accelerator: Accelerator | None = None) -> None:
        self.config = config
        if not config.model.model_dir or not Path(config.model.model_dir).is_dir():
            raise ValueError(f"model.model_dir {config.model.model_dir!r} is not a directory")
        set_seed(config.run.seed)
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else torch.float32
        if config.model.attention == "flex" and self.accelerator.device.type == "cpu":
            raise ValueError(
                'model.attention "flex" trains through FlexAttention\'s backward, which PyTorch does not '
                'implement on the CPU; use "lean" there'
            )
        model = AutoModelForCausalLM.from_pretrained(
            config.model.model_dir, dtype=dtype, attn_implementation=TREE_ATTENTION
        )
        if _untie_embeddings(model):
            log.info("untied_embeddings", model_dir=config.model.model_dir)
        if config.model.attention == "lean":
            recompute_in_backward(model, config.model.lean_recompute)
        self.vocab_size = int(model.config.vocab_size)
        self.reference = None
        if config.loss.kl_coef > 0:
            self.reference = AutoModelForCausalLM.from_pretrained(
                config.model.model_dir, dtype=dtype, attn_implementation=TREE_ATTENTION
            )
            self.reference.requires_grad_(False).eval().to(self.accelerator.device)
        opt = config.optimiser
        self.sharded = config.parallel.strategy == "fsdp" and self.accelerator.num_processes > 1
        if self.sharded:
            # Sharded before the optimiser exists: it must hold the shards, not the full tensors.
            shard_model(model.to(self.accelerator.device))
        optimiser = torch.optim.AdamW(
            model.parameters(),
            lr=opt.lr,
            betas=(opt.betas[0], opt.betas[1]),
            eps=opt.eps,
            weight_decay=opt.weight_decay,
        )
        if self.sharded:
            self.model, self.optimiser = model, optimiser
        else:
            self.model, self.optimiser = self.accelerator.prepare(model, optimiser)
        self.model.train()
        # Sharded: the full weights as of the last step, on rank 0 (``_gather_weights``).
        self._gathered: dict[str, torch.Tensor] = {}
        self._gather_weights()
        self.policy_version = 0
        self.steps_done = 0
        self.trained_trees = TrainedTrees(config.training.trained_ids_kept)

    # ------------------------------------------------------------------ batches

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def share_batch(self, trees: list[CompletedTree] | None) -> list[CompletedTree]:
        """Rank 0's trees on every rank (the others pass None)."""
        if self.world_size == 1:
            return list(trees or [])
        box = [trees if self.accelerator.is_main_process else None]
        broadcast_object_list(box, from_process=0)
        return list(box[0] or [])

    def _prepare(self, tree: CompletedTree) -> _PreparedTree:
        cfg = self.config
        training_tree = prepare_tree(tree, self.policy_version, cfg.training.staleness_eta, self.vocab_size)
        adv = node_advantages(
            cfg.advantage.kind,
            training_tree.parent,
            training_tree.reward,
            cfg.advantage.normalize_std,
            cfg.advantage.eps,
        )
        node_adv = torch.tensor(adv, dtype=torch.float32)
        batch = forward_batch(training_tree, cfg.model.packing)
        return _PreparedTree(
            training_tree,
            batch,
            node_adv[batch.target_node],
            node_adv[batch.path_leaf],
            loss_token_weights(batch.target_weight, cfg.loss.normalization),
        )

    # ------------------------------------------------------------------ update

    def train_step(self, trees: list[CompletedTree]) -> dict[str, Any]:
        """``updates_per_batch`` optimiser updates on ``trees`` (the same list on every rank),
        then the policy version goes up by one; returns metrics.

        Rejected trees are counted and skipped. A non-finite loss or gradient on any rank
        skips the update on all ranks: if it is the first, weights, optimiser state and
        version stay as they were; a later one ends the step early. A step that changed
        the weights adds its trees' ids to ``trained_trees``, which checkpoints keep.
        """
        cfg = self.config
        device = self.accelerator.device
        mine = trees[self.rank :: self.world_size]
        rejected: Counter[str] = Counter()
        prepared: list[_PreparedTree] = []
        stale_tokens = unpacked_action_tokens = 0
        for tree in mine:
            try:
                p = self._prepare(tree)
            except TreeRejected as err:
                rejected[err.reason] += 1
                log.warning("tree_rejected", tree_id=err.tree_id, reason=err.reason, detail=err.detail)
                continue
            action, stale, _ = p.tree.path_token_counts()
            unpacked_action_tokens += action
            stale_tokens += stale
            if p.batch.num_targets or cfg.loss.kind == "lpo":
                prepared.append(p)

        local = torch.tensor(
            [
                sum(float(p.batch.target_weight.sum()) for p in prepared),
                float(len(prepared)),
                float(stale_tokens),
                float(unpacked_action_tokens),
                float(sum(rejected.values())),
                sum(float(p.batch.target_weight[p.target_advantage.abs() > 1e-12].sum()) for p in prepared),
                sum(self._weight_past_bound(p) for p in prepared),
            ],
            dtype=torch.float64,
            device=device,
        )
        reduced = self.accelerator.reduce(local, "sum").tolist()
        token_weight, groups, stale_total, action_total, rejected_total, informative, past_bound = reduced
        metrics: dict[str, Any] = {
            "policy_version": self.policy_version,
            "trees": len(trees),
            "rejected_trees": int(rejected_total),
            "rejected_reasons_local": dict(rejected),
            # Counted once per path through a node, as an unpacked run would see them.
            "trained_tokens": token_weight,
            "nonzero_advantage_token_share": informative / token_weight if token_weight else 0.0,
            "stale_tokens": stale_total,
            "stale_token_share": stale_total / action_total if action_total else 0.0,
            # Checked on what reaches the loss, independently of how staleness is masked: must be 0.
            "trained_tokens_past_bound": past_bound,
        }
        if token_weight == 0 or groups == 0:
            log.warning("step_skipped", reason="nothing_to_train", **metrics)
            return {**metrics, "skipped": True, "skip_reason": "nothing_to_train"}

        updates = cfg.training.updates_per_batch
        forwards = _forwards(prepared, cfg.model.packing, cfg.model.max_tokens_per_forward)
        proximal: list[torch.Tensor | None] = [None] * len(forwards)
        if updates > 1:
            # Frozen before the first update, so later updates clip against the policy
            # the batch started from (with one update it is the current policy, detached).
            passes = self._passes(len(forwards))  # counted before any pass: it is a collective too
            with torch.no_grad():
                proximal = [self._logprobs(self.model, to_device(f.batch, device)) for f in forwards]
                for _ in range(passes - len(forwards)):
                    self._idle_loss()
        metrics["forwards"] = len(forwards)
        for update in range(updates):
            totals = self._accumulate_gradients(forwards, proximal, token_weight, groups)
            grad_norm = self._clip_gradients(cfg.optimiser.max_grad_norm)
            diagnostics = {
                "loss": totals[0],
                "grad_norm": grad_norm,
                "clip_fraction": totals[1] / token_weight,
                "mismatch_kl": totals[2] / token_weight,
                "importance_weight_mean": totals[3] / token_weight,
                "reference_kl": totals[4] / token_weight,
                "input_tokens": totals[5],
            }
            if update == 0:
                metrics.update(diagnostics)  # measured before any update of this step
            else:
                metrics.update(loss_last_update=totals[0], clip_fraction_last_update=diagnostics["clip_fraction"])
            if not (np.isfinite(totals[0]) and np.isfinite(grad_norm)):
                self.optimiser.zero_grad(set_to_none=True)
                log.error("update_skipped", reason="non_finite", update=update, loss=totals[0], grad_norm=grad_norm)
                if update == 0:
                    return {**metrics, "skipped": True, "skip_reason": "non_finite", "updates_applied": 0}
                break
            self.optimiser.step()
            self.optimiser.zero_grad(set_to_none=True)
            metrics["updates_applied"] = update + 1
        self._gather_weights()
        self.policy_version += 1
        self.steps_done += 1
        self.trained_trees.add(tree.tree_id for tree in trees)
        metrics["policy_version"] = self.policy_version
        log.info("train_step", **{k: v for k, v in metrics.items() if k != "rejected_reasons_local"})
        return {**metrics, "skipped": False}

    def _weight_past_bound(self, item: _PreparedTree) -> float:
        """Loss weight on tokens sampled more than ``staleness_eta`` versions before this one."""
        versions = torch.tensor(item.tree.policy_version, dtype=torch.long)[item.batch.target_node]
        past = (self.policy_version - versions) > self.config.training.staleness_eta
        return float(item.batch.target_weight[past].sum())

    def _logprobs(self, model: torch.nn.Module, batch: ForwardBatch) -> torch.Tensor:
        section = self.config.model
        return target_logprobs(model, batch, section.attention, section.lean_chunk_tokens)

    def _accumulate_gradients(
        self,
        forwards: list[_Forward],
        proximal: list[torch.Tensor | None],
        token_weight: float,
        groups: float,
    ) -> list[float]:
        """Backward over this rank's forwards, all-reduced once; returns the global diagnostic sums."""
        sums = torch.zeros(6, dtype=torch.float64, device=self.accelerator.device)
        scale = float(self.world_size)
        self.optimiser.zero_grad(set_to_none=True)
        work: list[tuple[_Forward, torch.Tensor | None] | None] = list(zip(forwards, proximal, strict=True))
        # A rank without trees still joins the all-reduce; a sharded one every layer's gathers.
        work += [None] * (self._passes(len(work)) - len(work))
        for i, item in enumerate(work):
            last = i == len(work) - 1
            context = self.accelerator.no_sync(self.model) if not last else contextlib.nullcontext()
            with context:
                if item is None:
                    loss = self._idle_loss()
                else:
                    loss, stats = self._forward_loss(item[0], item[1], token_weight, groups)
                    sums += stats
                    loss = loss * scale
                self.accelerator.backward(loss)
        return self.accelerator.reduce(sums, "sum").tolist()

    def _forward_loss(
        self, item: _Forward, proximal: torch.Tensor | None, token_weight: float, groups: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This forward's trees' share of the global loss, plus diagnostic sums (weighted by tokens)."""
        batch = to_device(item.batch, self.accelerator.device)
        device = batch.input_ids.device
        current = self._logprobs(self.model, batch)
        reference = None
        if self.reference is not None:
            with torch.no_grad():
                reference = self._logprobs(self.reference, batch)
        inputs = PolicyLossInputs(
            current_logprobs=current,
            behaviour_logprobs=batch.behaviour_logprobs,
            proximal_logprobs=proximal,
            reference_logprobs=reference,
            advantages=item.target_advantage.to(device),
            token_weights=batch.target_weight,
            path_of_pair=batch.path_of_pair,
            target_of_pair=batch.target_of_pair,
            path_advantages=item.path_advantage.to(device),
            tree_paths=batch.tree_paths,
            loss_weights=item.loss_weight.to(device),
        )
        loss, stats = policy_loss(self.config.loss, inputs, token_weight, groups)
        input_tokens = torch.tensor([float(batch.input_tokens)], dtype=torch.float64, device=device)
        return loss, torch.cat([stats.as_tensor(), input_tokens])

    def _passes(self, mine: int) -> int:
        """Forward passes this rank must run: its own (at least one), or the most of any rank when sharded."""
        if not self.sharded:
            return max(1, mine)
        count = torch.tensor([max(1, mine)], dtype=torch.long, device=self.accelerator.device)
        return int(self.accelerator.reduce(count, "max").item())

    def _clip_gradients(self, max_norm: float) -> float:
        if not self.sharded:
            return float(self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm))
        # The norm over DTensor gradients is reduced over the shards by PyTorch itself.
        return local_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))

    def _idle_loss(self) -> torch.Tensor:
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.accelerator.device)
        return self.model(input_ids=ids, use_cache=False).logits.sum() * 0.0

    # ------------------------------------------------------------------ checkpoints

    def _gather_weights(self) -> None:
        """Sharded: the full weights onto rank 0, every rank joining (all of them are in this step)."""
        if self.sharded:
            self._gathered = full_model_state(self.model)

    def _model_state(self) -> dict[str, torch.Tensor]:
        """The whole model's weights; when sharded, as of the last step and on rank 0 only."""
        if self.sharded:
            state = self._gathered
            if self.accelerator.is_main_process and not state:
                raise RuntimeError("the sharded model's weights were not gathered")
        else:
            state = self.accelerator.unwrap_model(self.model).state_dict()
        # Cloned so that no two entries share storage (safetensors refuses shared tensors).
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Model, optimiser, version and every rank's RNG states; all ranks must call it."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        if self.accelerator.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        self.accelerator.wait_for_everyone()
        rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch.save(rng, tmp / f"rng_rank{self.rank}.pt")
        # Sharded, the optimiser state is gathered by every rank together, and saved in the
        # unsharded form, so either kind of learner resumes from either kind of checkpoint.
        if self.sharded:
            gathered = full_optimiser_state(self.model, self.optimiser)
            optimiser_state = optimiser_state_by_index(gathered, parameter_names(self.model)) if gathered else {}
        else:
            optimiser_state = self.optimiser.state_dict()
        if self.accelerator.is_main_process:
            safetensors.torch.save_file(self._model_state(), str(tmp / WEIGHTS_FILE))
            torch.save(optimiser_state, tmp / OPTIMISER_FILE)
            state = {
                "policy_version": self.policy_version,
                "steps_done": self.steps_done,
                "world_size": self.world_size,
                "seed": self.config.run.seed,
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            (tmp / TRAINED_TREES_FILE).write_text(json.dumps(self.trained_trees.ids()))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            _commit_dir(tmp, target)
            log.info("checkpoint_saved", path=str(target), policy_version=self.policy_version)
        self.accelerator.wait_for_everyone()
        return target

    def save_rolling_checkpoint(self) -> Path | None:
        """Every ``checkpoint_every_steps`` updates: save ``<root>/v<version>``, keep the newest few."""
        training = self.config.training
        if self.steps_done == 0 or self.steps_done % training.checkpoint_every_steps:
            return None
        root = checkpoint_root(self.config)
        path = self.save_checkpoint(root / f"v{self.policy_version:08d}")
        if self.accelerator.is_main_process:
            for old in complete_checkpoints(root)[: -training.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, directory: str | Path) -> None:
        source = Path(directory)
        state = json.loads((source / STATE_FILE).read_text())
        weights = safetensors.torch.load_file(str(source / WEIGHTS_FILE))
        optimiser_state = torch.load(source / OPTIMISER_FILE, weights_only=False)
        if self.sharded:
            names = parameter_names(self.model)
            load_full_state(self.model, self.optimiser, weights, optimiser_state_by_name(optimiser_state, names))
            self._gather_weights()
        else:
            self.accelerator.unwrap_model(self.model).load_state_dict(weights, strict=True)
            self.optimiser.load_state_dict(optimiser_state)
        rng_file = source / f"rng_rank{self.rank}.pt"
        if rng_file.exists():  # absent when resuming on more ranks than were saved
            rng = torch.load(rng_file, weights_only=False)
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.policy_version = int(state["policy_version"])
        self.steps_done = int(state["steps_done"])
        self.trained_trees = TrainedTrees(self.config.training.trained_ids_kept)
        trained_file = source / TRAINED_TREES_FILE
        if trained_file.exists():  # absent in checkpoints written before trees were recorded
            self.trained_trees.add(json.loads(trained_file.read_text()))
        log.info(
            "checkpoint_loaded",
            path=str(source),
            policy_version=self.policy_version,
            trained_trees=len(self.trained_trees),
        )

    # ------------------------------------------------------------------ export

    def export_weights(self) -> bytes:
        """The full state dict as safetensors bytes, lm_head and embeddings as separate tensors."""
        return safetensors.torch.save(self._model_state(), metadata={"format": "pt"})

    def export_model_dir(self, path: str | Path) -> Path:
        """A loadable HF dir (config.json, model.safetensors, tokenizer files), written atomically."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _atomic_dir(target)
        config = AutoConfig.from_pretrained(self.config.model.model_dir)
        config.tie_word_embeddings = False
        config.save_pretrained(tmp)
        (tmp / WEIGHTS_FILE).write_bytes(self.export_weights())
        source = Path(self.config.model.model_dir)
        for name in _SIDECAR_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        _commit_dir(tmp, target)
        return target

    def close(self) -> None:
        """Destroy the process groups while the interpreter is whole. Left to exit, a gloo
        group's threads are torn down with the interpreter and one still joinable aborts the
        process (``terminate called without an active exception``, SIGABRT after a finished
        run). Single-process runs have no group and this does nothing."""
        self.accelerator.end_training()
