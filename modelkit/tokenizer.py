"""The embedded tokenizer: byte-level BPE trained on the environments' own text.

Two choices matter for rollouts:

* A word carries the space before it (``whitespace="prefix"``, as GPT-2 and Qwen do). The
  environments always put a space before a name, so a name has the same single id in an
  observation, a thought and an answer, and copying it is one attention lookup. The older
  ``"isolated"`` mode (every space its own token) doubled sequence lengths and made each copy
  a two-step lookup past a space token: the 1.1 M-parameter model copied the first token of a
  name wrongly in about half of its answers.
* The environment tags (``<search>``, ``</answer>`` ...) are whole added tokens, so stopping
  on a closing tag is one token. They are added as *non-special* tokens (as Qwen3 does with
  ``<think>``) because detokenisers skip special tokens by default and the environment must
  see the tags in the action text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

#: The Search-R1 tags; ``environment_tags()`` is the authoritative list.
SEARCH_R1_TAGS: tuple[str, ...] = (
    "<think>",
    "</think>",
    "<search>",
    "</search>",
    "<information>",
    "</information>",
    "<answer>",
    "</answer>",
)


WHITESPACE_MODES = ("prefix", "isolated")


@dataclass(frozen=True)
class TokenizerSpec:
    vocab_size: int = 1024
    min_frequency: int = 2
    tags: tuple[str, ...] = field(default=SEARCH_R1_TAGS)
    whitespace: str = "prefix"

    def __post_init__(self) -> None:
        if self.whitespace not in WHITESPACE_MODES:
            raise ValueError(f"tokenizer whitespace must be one of {WHITESPACE_MODES}, got {self.whitespace!r}")


def environment_tags(env_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The tags the named environments use, or every tag any environment uses (``environments.SPECIAL_TOKENS``)."""
    from environments import SPECIAL_TOKENS, env_special_tokens

    return tuple(SPECIAL_TOKENS) if env_names is None else env_special_tokens(env_names)


def train_tokenizer(texts: Iterable[str], spec: TokenizerSpec) -> PreTrainedTokenizerFast:
    """Train on ``texts``; the tags are removed from the training text so no merge is spent on them."""
    tag_pattern = re.compile("|".join(re.escape(t) for t in sorted(spec.tags, key=len, reverse=True)))
    bpe = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if spec.whitespace == "isolated":
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r"\s+"), behavior="isolated"), byte_level]
        )
    else:
        bpe.pre_tokenizer = byte_level
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((tag_pattern.sub(" ", t) for t in texts), trainer=trainer)
    bpe.add_tokens([AddedToken(t, special=False, normalized=False, single_word=False) for t in spec.tags])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
