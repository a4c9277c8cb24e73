"""A transformers-backed turn generator with the same interface as ``actors.engine.PolicyEngine``.

It lets the one episode loop (``actors.episode``) run without starting vLLM: the build
scores its warm start with it, and tests use it as an independent reference for vLLM.
Turns are generated one at a time, which is fast enough for a model of a million weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from actors.engine import Generation, turn_token_budget
from protocol.messages import SamplingSpec


class TransformersTurnGenerator:
    def __init__(self, model: Any, tokenizer: Any, max_model_len: int = 2048, policy_version: int = 0) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.policy_version = policy_version
        self.tokens_generated = 0

    @classmethod
    def from_dir(cls, model_dir: str | Path, max_model_len: int = 2048) -> TransformersTurnGenerator:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        return cls(model, AutoTokenizer.from_pretrained(model_dir), max_model_len)

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingSpec,
        *,
        stop_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Generation:
        max_tokens = turn_token_budget(len(prompt_ids), self.max_model_len, sampling.max_tokens_per_turn)
        if max_tokens < 1:
            raise ValueError(f"context of {len(prompt_ids)} tokens leaves no room under max_model_len")
        greedy = sampling.temperature == 0
        seed = seed if seed is not None else sampling.seed
        if seed is not None:
            torch.manual_seed(seed)
        stops = list(stop_token_ids or []) or [self.tokenizer.eos_token_id]
        with torch.no_grad():
            out = self.model.generate(
                torch.tensor([list(prompt_ids)]),
                attention_mask=torch.ones((1, len(prompt_ids)), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                eos_token_id=stops,
                pad_token_id=self.tokenizer.pad_token_id,
                stop_strings=list(stop_strings) if stop_strings and not stop_token_ids else None,
                tokenizer=self.tokenizer if stop_strings and not stop_token_ids else None,
                return_dict_in_generate=True,
                output_logits=True,
            )
        token_ids = out.sequences[0, len(prompt_ids) :].tolist()
        temperature = 1.0 if greedy else sampling.temperature
        logprobs = [
            float(torch.log_softmax(step_logits[0].float() / temperature, dim=-1)[token])
            for step_logits, token in zip(out.logits, token_ids, strict=True)
        ]
        finish = "stop" if token_ids and token_ids[-1] in stops else "length"
        self.tokens_generated += len(token_ids)
        return Generation(
            token_ids=token_ids,
            behaviour_logprobs=logprobs,
            text=self.tokenizer.decode(token_ids, skip_special_tokens=False),
            num_prompt_tokens=len(prompt_ids),
            num_cached_tokens=0,
            finish_reason=finish,
            policy_version=self.policy_version,
        )
