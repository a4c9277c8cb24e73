"""Run by torchrun from test_two_processes: two train_steps on fixed batches, save, load, a third, save."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from learner.trainer import Trainer
from tests.learner.helpers import batches, learner_config

#: Forward layouts by name: "lean" packs every tree of a rank into one forward through the chunked path;
#: "fsdp" shards the model over the ranks instead of replicating it.
LAYOUTS = {
    "packed": {"packing": True},
    "unpacked": {"packing": False},
    "lean": {"packing": True, "attention": "lean", "max_tokens_per_forward": 100_000},
    # Sharded with FSDP2; rank 0's three trees against rank 1's two make rank 1 run an idle pass.
    "fsdp": {"packing": True, "strategy": "fsdp"},
    # Two PPO updates per batch: the proximal forwards before the first also run on every rank.
    "fsdp-ppo2": {"packing": True, "strategy": "fsdp", "updates_per_batch": 2},
}


def main(model_dir: str, out_dir: str, layout: str) -> None:
    torch.set_num_threads(1)
    trainer = Trainer(learner_config(model_dir, **LAYOUTS[layout]))
    losses, trees = [], []
    # Step 1: five trees split 3 / 2. Step 2: one tree, so rank 1 idles but must still
    # join the gradient all-reduce.
    for size in (5, 1):
        mine = batches(seed=9 + size, steps=1, trees_per_step=size)[0] if trainer.rank == 0 else None
        batch = trainer.share_batch(mine)
        metrics = trainer.train_step(batch)
        losses.append(metrics["loss"])
        trees.append(metrics["trees"])
    out = Path(out_dir)
    trainer.save_checkpoint(out / "ckpt")
    # Resumed from its own checkpoint, a third step on three trees.
    trainer.load_checkpoint(out / "ckpt")
    mine = batches(seed=3, steps=1, trees_per_step=3)[0] if trainer.rank == 0 else None
    losses.append(trainer.train_step(trainer.share_batch(mine))["loss"])
    trainer.save_checkpoint(out / "resumed")
    (out / f"rank{trainer.rank}.json").write_text(
        json.dumps(
            {
                "world_size": trainer.world_size,
                "losses": losses,
                "trees": trees,
                # DTensor once sharded, a plain Parameter replicated by DDP.
                "parameter_type": type(next(trainer.model.parameters())).__name__,
            }
        )
    )
    trainer.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
