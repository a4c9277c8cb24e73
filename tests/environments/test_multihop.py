import pytest

from environments import EnvironmentError_, make_env, make_tasks
from environments.kb import KBConfig, build_kb, cached_kb, fact_query, question_text
from environments.multihop import generate_tasks
from environments.retrieval import Document, SearchIndex
from environments.searchqa import exact_match, normalize_answer
from environments.tags import parse_action
from protocol import TaskSpec


def _task(start, path, kb_seed=4, top_k=3):
    params = {
        "kb_seed": kb_seed,
        "num_people": 60,
        "num_relations": 4,
        "distractors": 2,
        "top_k": top_k,
        "start": start,
        "path": list(path),
    }
    return TaskSpec(env="multihop", task_id="hand", params=params)


def test_normalised_exact_match():
    assert normalize_answer("  The  Eva-Kim. ") == "evakim"
    assert normalize_answer("An apple, a pear") == "apple pear"
    assert exact_match("eva kim", ("Eva Kim",))
    assert exact_match("The Eva Kim!", ("Eva Kim",))
    assert not exact_match("Eva", ("Eva Kim",))
    assert exact_match("Paris", ("Lyon", "paris"))


def test_parse_action_takes_first_complete_block():
    assert parse_action("<think> x </think> <search>  a   b </search>").content == "a b"
    assert parse_action("<answer> Eva Kim </answer> <search> q </search>").kind == "answer"
    assert parse_action("<search> never closed") is None
    assert parse_action("<answer>   </answer>") is None
    assert parse_action("plain text") is None


def test_kb_is_deterministic_and_well_formed():
    config = KBConfig(kb_seed=11, num_people=30, num_relations=3, distractors=1)
    kb = build_kb(config)
    assert kb == build_kb(config)
    assert kb != build_kb(KBConfig(kb_seed=12, num_people=30, num_relations=3, distractors=1))
    assert len(kb.people) == len(set(kb.people)) == 30
    assert len(kb.documents) == 30 * (3 + 1)
    for (relation, person), other in kb.facts.items():
        assert other != person
        assert kb.documents[kb.fact_doc[(relation, person)]].text == f"the {relation} of {person} is {other}"


def test_bm25_ranks_the_document_about_the_entity_first():
    docs = [
        Document("1", "Omar Diaz", "the mentor of Omar Diaz is Ana Ruiz"),
        Document("2", "Ana Ruiz", "the mentor of Ana Ruiz is Omar Diaz"),
        Document("3", "Ana Ortiz", "the mentor of Ana Ortiz is Lina Park"),
        Document("4", "Ana Ruiz", "the city of Ana Ruiz is Oslo"),
    ]
    index = SearchIndex(docs)
    assert index.search("mentor of Ana Ruiz", 2)[0].doc_id == "2"
    assert index.search("xyzzy", 3) == []
    assert index.search_ids("mentor of Ana Ruiz", 2) == index.search_ids("mentor of Ana Ruiz", 2)


def test_hand_made_two_hop_episode():
    kb, _ = cached_kb(KBConfig(kb_seed=4))
    start = kb.people[0]
    middle = kb.facts[("mentor", start)]
    final = kb.facts[("manager", middle)]
    env = make_env("multihop")
    prompt = env.reset(_task(start, ["mentor", "manager"]))
    assert prompt == f"question : {question_text(start, ['mentor', 'manager'])}"
    assert f"the manager of the mentor of {start}" in prompt
    assert env.max_turns == 3
    assert env.score() == 0.0
    first = env.step(f"<think> need the mentor of {start} </think> <search> {fact_query('mentor', start)} </search>")
    assert first.observation.startswith("<information> ") and first.observation.endswith(" </information>")
    assert f"the mentor of {start} is {middle}" in first.observation
    assert not first.done and first.reward == 0.0
    assert env.score() == pytest.approx(1 / 3)
    env.step(f"<search> manager of {middle} </search>")
    assert env.score() == pytest.approx(2 / 3)
    last = env.step(f"<think> done </think> <answer> the {final.lower()}. </answer>")
    assert last.done and last.reward == 1.0 and env.score() == 1.0
    after = env.step("<answer> again </answer>")
    assert after.done and after.reward == 1.0


def test_wrong_answer_invalid_action_and_turn_cap():
    kb, _ = cached_kb(KBConfig(kb_seed=4))
    start = kb.people[1]
    env = make_env("multihop")
    env.reset(_task(start, ["friend"]))
    wrong = env.step(f"<answer> {start} </answer>")
    assert wrong.done and wrong.reward == 0.0

    env.reset(_task(start, ["friend"]))
    bad = env.step("I think the answer is obvious")
    assert bad.observation == "<information> invalid action </information>" and not bad.done
    capped = env.step("<search> friend of " + start + " </search>")
    assert capped.done and capped.reward == 0.0
    assert env.score() == 0.0


def test_expert_solves_every_generated_question():
    tasks = generate_tasks("train", 120, seed=3, min_hops=1, max_hops=4, num_relations=6, distractors=3, top_k=2)
    env = make_env("multihop")
    hops_seen = set()
    for task in tasks:
        env.reset(task)
        hops_seen.add(len(task.params["path"]))
        for _ in range(env.max_turns):
            result = env.step(env.expert_action())
            if result.done:
                break
        assert result.done and result.reward == 1.0, task
    assert hops_seen == {1, 2, 3, 4}


def test_actions_and_observations_stay_short():
    env = make_env("multihop")
    for task in make_tasks("multihop", "train", 30, seed=5, min_hops=4, max_hops=4):
        env.reset(task)
        while True:
            action = env.expert_action()
            assert len(action.split()) <= 24  # words incl. tags; far below 48 BPE tokens
            result = env.step(action)
            assert len(result.observation.split()) <= 60
            if result.done:
                break


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kb_seed": "4"}, "kb_seed"),
        ({"num_people": 10_000}, "num_people"),
        ({"start": "Nobody Here"}, "start"),
        ({"path": ["mentor", "boss"]}, "path"),
        ({"path": []}, "path"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_corrupt_task_params_raise_clear_errors(change, message):
    kb, _ = cached_kb(KBConfig(kb_seed=4))
    task = _task(kb.people[0], ["mentor"])
    bad = TaskSpec(env="multihop", task_id="bad", params={**task.params, **change})
    with pytest.raises(EnvironmentError_, match=message):
        make_env("multihop").reset(bad)
