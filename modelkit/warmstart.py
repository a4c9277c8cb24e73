"""Supervised warm start on demonstrations, tokenised exactly as rollouts are.

Loss is taken only on action tokens (the policy never generates prompts or observations).
Sequences are grouped by length so that a batch wastes little on padding; the order of
batches comes from an explicit seed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from environments import make_tasks
from environments.demos import demo_episode
from modelkit.config import DemoConfig, TrainingConfig
from modelkit.formatting import episode_token_ids
from tracerl.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DemoText:
    env: str
    prompt: str
    turns: tuple[tuple[str, str], ...]
    reward: float


@dataclass(frozen=True)
class EncodedDemo:
    token_ids: list[int]
    is_action: list[bool]


def demonstrations(config: DemoConfig) -> list[DemoText]:
    """``demos_per_env`` training-split demos of every environment, mistakes included."""
    profile = config.mistakes.profile()
    demos = []
    for env_name in config.environments:
        tasks = make_tasks(env_name, "train", config.demos_per_env, config.seed, **config.difficulty.get(env_name, {}))
        rng = random.Random(f"demos:{env_name}:{config.seed}")
        for task in tasks:
            demo = demo_episode(env_name, task, rng, profile)
            demos.append(DemoText(env_name, demo.prompt, demo.turns, demo.reward))
    return demos


def encode_demos(tokenizer, demos: Sequence[DemoText], max_tokens: int) -> list[EncodedDemo]:
    """Demos that fit in ``max_tokens``; longer ones are dropped rather than cut mid-turn."""
    encoded = []
    for demo in demos:
        ids, is_action = episode_token_ids(tokenizer, demo.prompt, demo.turns)
        if len(ids) <= max_tokens:
            encoded.append(EncodedDemo(ids, is_action))
    return encoded


def length_batches(lengths: Sequence[int], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length, each padded size <= batch_tokens, shuffled."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = max(lengths[index], max((lengths[i] for i in current), default=0))
        if current and longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def decay_window(config: TrainingConfig, plateau_exit_step: int | None) -> tuple[int, int] | None:
    """(first step, length) of the cosine decay; None while the peak rate is held on the plateau."""
    if config.plateau_exit_loss <= 0:
        return config.warmup_steps, config.steps - config.warmup_steps
    if plateau_exit_step is None:
        return None
    return plateau_exit_step, config.steps_after_plateau


def total_steps(config: TrainingConfig, plateau_exit_step: int | None) -> int:
    """Steps the warm start runs, as far as is known now (``config.steps`` until the plateau is left)."""
    window = decay_window(config, plateau_exit_step)
    return config.steps if window is None else min(config.steps, sum(window))


def learning_rate(step: int, config: TrainingConfig, plateau_exit_step: int | None = None) -> float:
    """Linear warm-up, the peak held until the plateau is left, then cosine decay to
    ``min_learning_rate`` over the decay window."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    window = decay_window(config, plateau_exit_step)
    if window is None:
        return config.learning_rate
    start, length = window
    progress = max(0, step - start) / max(1, length)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * cosine


def left_plateau(recent_losses: Sequence[float], config: TrainingConfig, window: int = 20) -> bool:
    """The mean of the last ``window`` losses is below the plateau (a single lucky batch is not)."""
    if config.plateau_exit_loss <= 0 or len(recent_losses) < window:
        return False
    return sum(recent_losses[-window:]) / window < config.plateau_exit_loss


def collate(batch: Sequence[EncodedDemo], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, loss mask on next-token targets), right-padded."""
    width = max(len(d.token_ids) for d in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    target_mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, demo in enumerate(batch):
        n = len(demo.token_ids)
        ids[row, :n] = torch.tensor(demo.token_ids)
        attention[row, :n] = 1
        target_mask[row, :n] = torch.tensor(demo.is_action)
    return ids, attention, target_mask


def action_loss(model, ids: torch.Tensor, attention: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over action tokens."""
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    targets = ids[:, 1:]
    mask = target_mask[:, 1:]
    return F.cross_entropy(logits[mask], targets[mask])


def train(
    model,
    demos: Sequence[EncodedDemo],
    pad_id: int,
    config: TrainingConfig,
    threads: int = 2,
    progress: Callable[[dict], None] | None = None,
) -> dict[str, float | None]:
    """AdamW over length-grouped batches (cycling epochs) until the schedule ends; returns summary numbers."""
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    lengths = [len(d.token_ids) for d in demos]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
    model.train()
    started = time.monotonic()
    last_report = started
    batches: list[list[int]] = []
    tokens_seen = 0
    recent: list[float] = []
    plateau_exit_step: int | None = None
    step = 0
    while step < total_steps(config, plateau_exit_step):
        if not batches:
            batches = length_batches(lengths, config.batch_tokens, rng)
        batch = [demos[i] for i in batches.pop()]
        ids, attention, target_mask = collate(batch, pad_id)
        rate = learning_rate(step, config, plateau_exit_step)
        for group in optimizer.param_groups:
            group["lr"] = rate
        loss = action_loss(model, ids, attention, target_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        tokens_seen += int(attention.sum())
        recent = [*recent, loss.item()][-50:]
        step += 1
        if plateau_exit_step is None and left_plateau(recent, config):
            plateau_exit_step = step
            log.info("warm start left the plateau", step=step, loss=round(sum(recent[-20:]) / 20, 4))
        now = time.monotonic()
        planned = total_steps(config, plateau_exit_step)
        if progress is not None and (now - last_report >= 10 or step == planned):
            last_report = now
            elapsed = now - started
            progress(
                {
                    "step": step,
                    "steps": planned,
                    "loss": round(sum(recent) / len(recent), 4),
                    "lr": round(rate, 6),
                    "tokens_per_s": round(tokens_seen / elapsed),
                    "eta_s": round(elapsed / step * (planned - step)),
                    "plateau_left_at": plateau_exit_step,
                }
            )
    model.eval()
    return {
        "final_loss": round(sum(recent) / len(recent), 4),
        "train_seconds": round(time.monotonic() - started, 1),
        "tokens_seen": tokens_seen,
        "steps": step,
        "plateau_left_at": plateau_exit_step,
    }
