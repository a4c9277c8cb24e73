import json

import pytest

from environments import EnvironmentError_, make_env, make_tasks
from environments.searchqa_jsonl import load_corpus, load_questions

CORPUS = [
    {"id": "0", "contents": '"Lake Tana"\nLake Tana is the source of the Blue Nile.'},
    {"id": "1", "contents": '"Blue Nile"\nThe Blue Nile joins the White Nile at Khartoum.'},
    {"id": "2", "title": "Khartoum", "text": "Khartoum is the capital of Sudan."},
    {"id": "3", "title": "Nairobi", "text": "Nairobi is the capital of Kenya."},
]
TRAIN = [
    {
        "id": "q1",
        "question": "Which city is where the river leaving Lake Tana meets the White Nile?",
        "golden_answers": ["Khartoum"],
    },
    {"id": "q2", "question": "What is the capital of Kenya?", "golden_answers": ["Nairobi", "Nairobi City"]},
]
HELDOUT = [
    {"id": "h1", "question": "Khartoum is the capital of which country?", "golden_answers": "Sudan"},
    {"id": "h2", "question": "What is the capital of Kenya?", "golden_answers": ["Nairobi"]},
]


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {
        "corpus_file": write_jsonl(tmp_path / "corpus.jsonl", CORPUS),
        "train_file": write_jsonl(tmp_path / "train.jsonl", TRAIN),
        "heldout_file": write_jsonl(tmp_path / "test.jsonl", HELDOUT),
    }


def test_loaders_read_both_corpus_layouts(files):
    docs = load_corpus(files["corpus_file"])
    assert [d.title for d in docs] == ["Lake Tana", "Blue Nile", "Khartoum", "Nairobi"]
    assert docs[2].text == "Khartoum : Khartoum is the capital of Sudan."
    questions = load_questions(files["heldout_file"])
    assert questions[0].golden_answers == ("Sudan",)


def test_episode_over_a_local_corpus(files):
    tasks = make_tasks("searchqa", "train", 2, seed=0, **files)
    task = next(t for t in tasks if t.task_id == "searchqa-train-q2")
    env = make_env("searchqa")
    prompt = env.reset(task)
    assert prompt.endswith("question : What is the capital of Kenya?")
    result = env.step("<think> look it up </think> <search> capital of Kenya </search>")
    assert result.observation.startswith("<information> Nairobi : Nairobi is the capital of Kenya.")
    assert env.score() == 0.5
    final = env.step("<answer> nairobi city </answer>")
    assert final.done and final.reward == 1.0


def test_expert_and_snapshot_on_local_corpus(files):
    env = make_env("searchqa")
    for task in make_tasks("searchqa", "heldout", 1, seed=0, **files):
        env.reset(task)
        env.step(env.expert_action())
        clone = make_env("searchqa")
        clone.restore(env.snapshot())
        action = clone.expert_action()
        assert env.step(action) == clone.step(action)
        assert env.score() == 1.0


def test_heldout_drops_questions_also_in_train(files):
    heldout = make_tasks("searchqa", "heldout", 1, seed=0, **files)
    assert [t.params["question"] for t in heldout] == ["Khartoum is the capital of which country?"]
    with pytest.raises(ValueError, match="only 1 are available"):
        make_tasks("searchqa", "heldout", 2, seed=0, **files)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"golden_answers": ["x"]}', "field 'question'"),
        ('{"question": "q", "golden_answers": []}', "golden_answers"),
        ('{"question": "q", "golden_answers": [3]}', "golden_answers"),
    ],
)
def test_corrupt_question_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(TRAIN[0]) + "\n\n" + line + "\n")
    with pytest.raises(EnvironmentError_, match=rf"bad\.jsonl:3: .*{message}"):
        load_questions(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{oops", "not valid JSON"),
        ('{"id": "9"}', "needs 'contents' or 'text'"),
        ('{"title": 1, "text": "t"}', "title"),
    ],
)
def test_corrupt_corpus_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps(CORPUS[0]) + "\n" + line + "\n")
    with pytest.raises(EnvironmentError_, match=rf"corpus\.jsonl:2: .*{message}"):
        load_corpus(path)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(EnvironmentError_, match="cannot read"):
        load_questions(tmp_path / "nope.jsonl")
    with pytest.raises(EnvironmentError_, match="cannot read corpus"):
        make_tasks(
            "searchqa",
            "train",
            1,
            seed=0,
            train_file=write_jsonl(tmp_path / "t.jsonl", TRAIN),
            heldout_file=str(tmp_path / "h.jsonl"),
            corpus_file=str(tmp_path / "missing.jsonl"),
        )
