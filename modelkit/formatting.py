"""How episode text becomes token ids, shared by the actors (rollouts) and the warm start (SFT).

A rollout's token sequence is built segment by segment: the prompt once, then for every
turn the policy's generated action ids verbatim and the observation encoded on its own.
Training data for the warm start must be tokenised the same way, or the model would learn
token boundaries that never occur at rollout time. Text is never re-tokenised after
generation: the generated ids are what the learner trains on.
"""

from __future__ import annotations

from typing import Any


def uses_chat_template(tokenizer: Any) -> bool:
    """Instruction-tuned models (Qwen3 and kin) expect their chat template around the prompt."""
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_token_ids(tokenizer: Any, prompt_text: str) -> list[int]:
    if uses_chat_template(tokenizer):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt_text}], add_generation_prompt=True, tokenize=True
        )
        # transformers 5 returns a BatchEncoding-like mapping for some tokenizers.
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer.encode(prompt_text, add_special_tokens=False)


def observation_token_ids(tokenizer: Any, observation_text: str) -> list[int]:
    return tokenizer.encode(observation_text, add_special_tokens=False)


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of ``text`` when it is exactly one token (a special tag), else None."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def stop_token_ids(tokenizer: Any, stop_strings: tuple[str, ...] | list[str]) -> list[int] | None:
    """Stop ids when every stop string is one token; None means "stop on strings instead".

    Stopping on a token id keeps generated ids and text aligned exactly; stop strings can end
    inside a token, which is why they are only the fallback for tokenizers without the tags.
    """
    ids = [single_token_id(tokenizer, s) for s in stop_strings]
    if any(i is None for i in ids):
        return None
    return [i for i in ids if i is not None]


def action_token_ids(tokenizer: Any, action_text: str) -> list[int]:
    """The ids of an action written by a demonstrator (a policy's own actions keep their generated ids)."""
    return tokenizer.encode(action_text, add_special_tokens=False)


def episode_token_ids(
    tokenizer: Any, prompt_text: str, turns: list[tuple[str, str]] | tuple[tuple[str, str], ...]
) -> tuple[list[int], list[bool]]:
    """A whole episode as a rollout would hold it, plus which positions are policy actions.

    ``turns`` are (action_text, observation_text) pairs. The mask is True exactly on action
    tokens: those are what the policy generates, so only they carry a training loss.
    """
    ids = prompt_token_ids(tokenizer, prompt_text)
    is_action = [False] * len(ids)
    for action_text, observation_text in turns:
        action = action_token_ids(tokenizer, action_text)
        observation = observation_token_ids(tokenizer, observation_text)
        ids.extend(action)
        is_action.extend([True] * len(action))
        ids.extend(observation)
        is_action.extend([False] * len(observation))
    return ids, is_action
