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


def test_a_name_has_the_same_ids_in_an_observation_a_thought_and_an_answer(tokenizer):
    name = tokenizer.encode(" Finn Ortiz", add_special_tokens=False)
    assert len(name) == 2, tokenizer.convert_ids_to_tokens(name)  # one id per word: a copy is one lookup
    for text in (
        "<information> the mentor of Ada Park is Finn Ortiz ; the city of Ada Park is Rome </information>",
        "<think> the answer is Finn Ortiz </think> <answer> Finn Ortiz </answer>",
        "<search> mentor of Finn Ortiz </search>",
    ):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert any(ids[i : i + 2] == name for i in range(len(ids) - 1)), text
        assert tokenizer.decode(ids) == text


def test_isolated_whitespace_mode_gives_every_space_its_own_token():
    texts = ["<search> coach of Ada Park </search> the coach of Ada Park is Omar Diaz"] * 20
    isolated = train_tokenizer(texts, TokenizerSpec(vocab_size=300, tags=tuple(SPECIAL_TOKENS), whitespace="isolated"))
    prefix = train_tokenizer(texts, TokenizerSpec(vocab_size=300, tags=tuple(SPECIAL_TOKENS)))
    text = "the coach of Ada Park is Omar Diaz"
    assert isolated.convert_ids_to_tokens(isolated.encode(text, add_special_tokens=False)).count("\u0120") == 7
    assert len(prefix.encode(text, add_special_tokens=False)) == 8
    with pytest.raises(ValueError, match="whitespace"):
        TokenizerSpec(whitespace="tabs")


def test_eos_and_pad_are_set_and_there_is_no_chat_template(tokenizer):
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert not getattr(tokenizer, "chat_template", None)


def test_episode_ids_concatenate_rollout_segments_and_mask_only_actions(tokenizer):
    prompt = "question : who is the coach of Lina Lopez ?"
    turns = [
        (
            "<think> need the coach of Lina Lopez </think> <search> coach of Lina Lopez </search>",
            "<information> the coach of Lina Lopez is Ali Costa </information>",
        ),
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


def test_a_math_tokenizer_stops_on_one_token_and_reads_a_number_alike_everywhere():
    from environments import make_env
    from modelkit.config import DemoConfig
    from modelkit.tokenizer import environment_tags
    from modelkit.warmstart import demonstrations

    demos = demonstrations(DemoConfig(environments=["math"], demos_per_env=300))
    texts = [text for demo in demos for text in (demo.prompt, *(t for turn in demo.turns for t in turn))]
    tokenizer = train_tokenizer(texts, TokenizerSpec(vocab_size=600, tags=environment_tags(["math"])))
    assert stop_token_ids(tokenizer, make_env("math").stop_strings) is not None
    number = tokenizer.encode(" 48", add_special_tokens=False)
    for text in (
        "Ana has 4 tins with 48 pencils",
        "<information> 48 </information>",
        "<calculate> 48 - 15 </calculate>",
    ):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert any(ids[i : i + len(number)] == number for i in range(len(ids))), text


@pytest.mark.parametrize(
    "env_name, word, texts",
    [
        (
            "toolcall",
            "o4",
            (
                '<tool_response> {"orders": ["o2", "o4"]} </tool_response>',
                '<tool_call> {"name": "get_order", "arguments": {"order_id": "o4"}} </tool_call>',
            ),
        ),
        (
            "webshop",
            " p017",
            (
                "<information> results for mug : [ p017 ] apex ceramic mug $ 12.99 </information>",
                "<answer> click[ p017 ] </answer>",
            ),
        ),
    ],
)
def test_a_tool_tokenizer_stops_on_one_token_and_reads_an_id_alike_in_the_page_and_the_action(env_name, word, texts):
    from environments import make_env
    from modelkit.config import DemoConfig
    from modelkit.tokenizer import environment_tags
    from modelkit.warmstart import demonstrations

    demos = demonstrations(DemoConfig(environments=[env_name], demos_per_env=200))
    corpus = [text for demo in demos for text in (demo.prompt, *(t for turn in demo.turns for t in turn))]
    tokenizer = train_tokenizer(corpus, TokenizerSpec(vocab_size=600, tags=environment_tags([env_name])))
    assert stop_token_ids(tokenizer, make_env(env_name).stop_strings) is not None
    word_ids = tokenizer.encode(word, add_special_tokens=False)
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert any(ids[i : i + len(word_ids)] == word_ids for i in range(len(ids))), text
