from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from environments import SPECIAL_TOKENS, STOP_STRINGS
from modelkit.formatting import episode_token_ids, observation_token_ids, prompt_token_ids, stop_token_ids
from modelkit.tokenizer import TokenizerSpec, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(random_model_dir):
    return AutoTokenizer.from_pretrained(random_model_dir)


def test_every_tag_is_one_token_and_survives_decoding(tokenizer):
    for tag in SPECIAL_TOKENS:
        ids = tokenizer.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, tag
        # Detokenisers skip special tokens by default; the tags must still reach the environment.
        assert tokenizer.decode(ids, skip_special_tokens=True) == tag
    assert stop_token_ids(tokenizer, STOP_STRINGS) is not None


def test_a_name_tokenises_the_same_with_or_without_a_leading_space(tokenizer):
    bare = tokenizer.encode("Finn Ortiz", add_special_tokens=False)
    spaced = tokenizer.encode(" Finn Ortiz", add_special_tokens=False)
    assert spaced[1:] == bare
    text = "<search> mentor of Finn Ortiz </search>"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_eos_and_pad_are_set_and_there_is_no_chat_template(tokenizer):
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert not getattr(tokenizer, "chat_template", None)


def test_episode_ids_concatenate_rollout_segments_and_mask_only_actions(tokenizer):
    prompt = "question : who is the coach of Lina Lopez ?"
    turns = [
        ("<think> need the coach of Lina Lopez </think> <search> coach of Lina Lopez </search>",
         "<information> the coach of Lina Lopez is Ali Costa </information>"),
        ("<think> the answer is Ali Costa </think> <answer> Ali Costa </answer>", ""),
    ]
    ids, is_action = episode_token_ids(tokenizer, prompt, turns)
    expected: list[int] = list(prompt_token_ids(tokenizer, prompt))
    expected_mask = [False] * len(expected)
    for action, observation in turns:
        action_ids = tokenizer.encode(action, add_special_tokens=False)
        obs_ids = observation_token_ids(tokenizer, observation)
        expected += action_ids + obs_ids
        expected_mask += [True] * len(action_ids) + [False] * len(obs_ids)
    assert ids == expected and is_action == expected_mask
    closing = [ids[i] for i in range(len(ids) - 1) if is_action[i] and not is_action[i + 1]] + [ids[-1]]
    assert [tokenizer.decode([t]) for t in closing] == ["</search>", "</answer>"]


def test_tokenizer_training_is_deterministic():
    texts = ["<search> coach of Ada Park </search> the coach of Ada Park is Omar Diaz"] * 20
    spec = TokenizerSpec(vocab_size=300, tags=tuple(SPECIAL_TOKENS))
    first, second = train_tokenizer(texts, spec), train_tokenizer(texts, spec)
    assert first.get_vocab() == second.get_vocab()
