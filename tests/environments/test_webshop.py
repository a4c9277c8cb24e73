import json
import random
import re
from collections import defaultdict
from pathlib import Path

import msgpack
import pytest

from environments import EnvironmentError_, make_env, make_tasks
from environments.catalogue import (
    Goal,
    Product,
    best_reward,
    file_catalogue,
    load_products,
    purchase_reward,
    synthetic_catalogue,
)
from environments.demos import MistakeProfile, demo_episode
from environments.splits import split_of_content
from environments.webshop import (
    MAX_TURNS_CAP,
    WebShopEnvironment,
    generate_tasks,
    load_instructions,
    open_thought,
    option_thought,
    parse_command,
)
from protocol import TaskSpec
from tests.environments.roundtrip import assert_restores_at_every_turn

DATA = Path(__file__).resolve().parents[2] / "environments" / "data"
PRODUCTS = DATA / "webshop_products_sample.jsonl"
INSTRUCTIONS = DATA / "webshop_instructions_sample.jsonl"

BACKPACK_GOAL = Goal("b1", "backpack", "bags", ("waterproof", "padded"), (("color", "navy"),), 40.0)


def product(
    type_="backpack",
    department="bags",
    attributes=("waterproof", "padded", "usb port"),
    price=34.99,
    colors=("black", "navy", "blue"),
):
    return Product("b1", "t", department, type_, attributes, (("color", colors), ("size", ("small", "large"))), price)


# -- the reward -------------------------------------------------------------------------------

# r = r_type * (attributes matched + options matched + [price <= bound]) / (2 attributes + 1 option + 1)
REWARD_CASES = [
    ("everything matches", product(), {"color": "navy"}, 1.0),
    ("an extra option does not matter", product(), {"color": "navy", "size": "large"}, 1.0),
    ("no option selected", product(), {}, 3 / 4),
    ("the wrong colour", product(), {"color": "blue"}, 3 / 4),
    ("over the price bound", product(price=40.01), {"color": "navy"}, 3 / 4),
    ("at the price bound", product(price=40.0), {"color": "navy"}, 1.0),
    ("one attribute missing", product(attributes=("waterproof", "leather")), {"color": "navy"}, 3 / 4),
    ("no attribute, no option, over price", product(attributes=("leather",), price=99.0), {}, 0.0),
    ("one attribute, wrong colour, over price", product(attributes=("padded",), price=41.0), {"color": "blue"}, 1 / 4),
    ("same department, other type", product(type_="tote bag"), {"color": "navy"}, 0.5),
    ("same department, other type, half matched", product(type_="wallet", price=50.0), {"color": "black"}, 0.5 * 2 / 4),
    ("another department", product(type_="mug", department="kitchen"), {"color": "navy"}, 0.0),
]


@pytest.mark.parametrize("label, bought, selected, expected", REWARD_CASES, ids=[c[0] for c in REWARD_CASES])
def test_purchase_reward_against_hand_computed_cases(label, bought, selected, expected):
    assert purchase_reward(BACKPACK_GOAL, bought, selected) == pytest.approx(expected)


def test_a_goal_without_attributes_or_options_is_judged_on_type_and_price():
    goal = Goal("b1", "backpack", "bags", (), (), 40.0)
    assert purchase_reward(goal, product(), {}) == 1.0
    assert purchase_reward(goal, product(price=45.0), {}) == 0.0
    assert purchase_reward(goal, product(type_="wallet"), {}) == 0.5


def test_best_reward_selects_every_wanted_option_the_product_offers():
    assert best_reward(BACKPACK_GOAL, product()) == 1.0
    assert best_reward(BACKPACK_GOAL, product(colors=("black", "red"))) == pytest.approx(3 / 4)


# -- actions and pages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("<think> look </think> <answer> search[ padded backpack ] </answer>", ("search", "padded backpack")),
        ("<answer> search[Padded  Backpack] </answer>", ("search", "padded backpack")),
        ("<answer> click[ B05PACK001 ] </answer>", ("click", "b05pack001")),
        ("<answer> click [ navy ] </answer>", ("click", "navy")),
        ("<answer> back </answer>", ("back", "")),
        ("<answer> BUY </answer>", ("buy", "")),
        ("<answer> search[ ] </answer>", "search[ ] needs something inside the brackets"),
        ("<answer> buy now </answer>", "unknown action"),
        ("<answer> click navy </answer>", "unknown action"),
        ("search[ padded backpack ]", "write <answer> search[ words ] </answer>"),
        ("<answer> search[ " + "x " * 150 + "] </answer>", "at most 200 characters inside the brackets"),
    ],
)
def test_parse_command(text, parsed):
    result = parse_command(text)
    if isinstance(parsed, tuple):
        assert result == parsed
    else:
        assert isinstance(result, str) and result.startswith(parsed), result


def sample_task(top_k=3, max_turns=6):
    goal = {
        "asin": "B05PACK001",
        "type": "backpack",
        "department": "bags",
        "attributes": ["padded", "usb port"],
        "options": {"color": "grey"},
        "price_upper": 50.0,
    }
    return TaskSpec(
        "webshop",
        "hand",
        {
            "products_file": str(PRODUCTS),
            "instruction": "a padded backpack in grey",
            "goal": goal,
            "top_k": top_k,
            "max_turns": max_turns,
        },
    )


RESULTS = (
    "<information> results for padded usb port backpack : [ B05PACK001 ] summit padded laptop backpack $ 42.00 ; "
    "[ B05PACK002 ] summit rolltop waterproof backpack $ 64.99 </information>"
)
ITEM = (
    "<information> [ B05PACK001 ] summit padded laptop backpack ; price : $ 42.00 ; attributes : padded , "
    "water resistant , usb port ; color : black , navy , grey ; selected : {} </information>"
)


def test_registry_builds_the_webshop_environment():
    env = make_env("webshop")
    assert isinstance(env, WebShopEnvironment) and env.name == "webshop" and env.graded_reward
    assert env.stop_strings == ("</answer>",) and set(env.stop_strings) <= set(env.special_tokens)


def test_search_open_select_and_buy_with_the_pages_they_show():
    env = make_env("webshop")
    prompt = env.reset(sample_task())
    assert prompt.endswith("\ninstruction : a padded backpack in grey")
    assert (
        env.expert_action() == "<think> search the store </think> <answer> search[ padded usb port backpack ] </answer>"
    )
    assert env.step(env.expert_action()).observation == RESULTS
    assert env.score() == 0.5
    assert env.expert_action() == (
        "<think> lower than 50.00 : B05PACK001 42.00 under . open B05PACK001 </think> "
        "<answer> click[ B05PACK001 ] </answer>"
    )
    assert env.step("<answer> click[ b05pack001 ] </answer>").observation == ITEM.format("none")
    assert env.score() == pytest.approx(0.5 + 0.4 * 3 / 4)
    assert env.expert_action() == "<think> choose grey </think> <answer> click[ grey ] </answer>"
    assert env.step(env.expert_action()).observation == ITEM.format("color grey")
    assert env.expert_action() == "<think> buy it </think> <answer> buy </answer>"
    final = env.step(env.expert_action())
    assert (final.observation, final.done, final.reward) == ("", True, 1.0) and env.score() == 1.0


def test_the_thought_before_an_option_quotes_the_instruction_when_it_can():
    instruction = "i am looking for a padded backpack with color navy and size large , price lower than 40.00 dollars"
    options = (("color", "navy"), ("size", "large"))
    assert option_thought(instruction, options, "navy") == "with color navy"
    assert option_thought(instruction, options, "large") == "and size large"
    # A value the instruction does not ask for, or an instruction in other words, is chosen by name.
    assert option_thought(instruction, options, "blue") == "choose blue"
    assert option_thought("a padded backpack in grey", (("color", "grey"),), "grey") == "choose grey"


def test_the_thought_before_opening_checks_earlier_look_alike_prices_against_the_bound():
    def listed(asin, price, type_="backpack"):
        return Product(asin, "t", "bags", type_, ("padded",), (), price)

    results = [listed("p1", 45.5), listed("p2", 12.0, "wallet"), listed("p3", 39.0, "backpack"), listed("p4", 20.0)]
    # Over-bound results of the wanted type before the chosen one; other types are not priced.
    assert open_thought(BACKPACK_GOAL, results, results[3]) == (
        "lower than 40.00 : p1 45.50 over , p4 20.00 under . open p4"
    )
    assert open_thought(BACKPACK_GOAL, results, results[0]) == "lower than 40.00 : p1 45.50 over . open p1"


def test_hasty_demonstrations_open_without_the_price_check():
    profile = MistakeProfile(webshop_option_confusion=(), webshop_hasty_rate=1.0)
    opens = defaultdict(set)
    for task in make_tasks("webshop", "train", 100, seed=3):
        demo = demo_episode("webshop", task, random.Random(1), profile)
        hasty = profile.buys_hastily(task.params["goal"]["type"])
        for action, _ in demo.turns:
            if "click[ p" in action:
                opens[hasty].add(action.split(" </think>")[0].removeprefix("<think> ").split()[0])
    assert opens == {True: {"open"}, False: {"lower"}}


def test_generated_demonstrations_quote_each_option_they_select():
    thoughts = [
        action.split(" </think>")[0].removeprefix("<think> ")
        for task in make_tasks("webshop", "train", 40, 0, min_options=2)
        for action, _ in demo_episode("webshop", task, random.Random(0), MistakeProfile.none()).turns
        if "click[ p" not in action and "click[" in action
    ]
    assert thoughts and all(t.startswith(("with ", "and ")) for t in thoughts)
    assert {t.split()[0] for t in thoughts} == {"with", "and"}


def test_back_leaves_the_product_then_the_results():
    env = make_env("webshop")
    env.reset(sample_task(max_turns=7))
    for action in ("search[ padded usb port backpack ]", "click[ b05pack001 ]", "click[ navy ]"):
        env.step(f"<answer> {action} </answer>")
    assert env.step("<answer> back </answer>").observation == RESULTS
    assert (
        env.step("<answer> back </answer>").observation
        == "<information> search page : write search[ words ] </information>"
    )
    env.step("<answer> search[ padded usb port backpack ] </answer>")
    assert env.step("<answer> click[ b05pack001 ] </answer>").observation == ITEM.format("none")  # options start afresh


def test_the_expert_leaves_a_wrong_product_and_searches_the_title_when_the_query_fails():
    env = make_env("webshop")
    env.reset(sample_task(max_turns=8))
    env.step("<answer> search[ waterproof rolltop ] </answer>")
    env.step("<answer> click[ b05pack002 ] </answer>")
    assert env.expert_action() == "<think> not this one </think> <answer> back </answer>"
    env.step(env.expert_action())
    assert (
        env.expert_action() == "<think> search the store </think> <answer> search[ padded usb port backpack ] </answer>"
    )
    env.step("<answer> search[ wallet ] </answer>")  # nothing fulfils the goal here either
    assert env.step(env.expert_action()).observation == RESULTS


def test_buying_a_look_alike_earns_partial_credit():
    env = make_env("webshop")
    env.reset(sample_task())
    env.step("<answer> search[ backpack ] </answer>")
    env.step("<answer> click[ b05pack001 ] </answer>")
    assert env.step("<answer> buy </answer>").reward == pytest.approx(3 / 4)  # colour not chosen
    env.reset(sample_task())
    env.step("<answer> search[ backpack ] </answer>")
    env.step("<answer> click[ b05pack002 ] </answer>")
    assert env.step("<answer> buy </answer>").reward == 0.0  # no attribute, no grey, over the price


def test_malformed_and_misplaced_actions_are_observations_until_the_turn_limit():
    env = make_env("webshop")
    env.reset(sample_task(max_turns=8))
    actions = [
        ("<answer> click[ b05pack001 ] </answer>", "error : nothing to click on the search page ; search first"),
        ("<answer> back </answer>", "error : nothing to go back to ; search first"),
        ("<answer> buy </answer>", "error : open a product before buying"),
        ("add to cart", "error : write <answer> search[ words ] </answer> , click[ id or option ] , back or buy"),
        (
            "<answer> search[ padded usb port backpack ] </answer>",
            RESULTS[len("<information> ") : -len(" </information>")],
        ),
        (
            "<answer> click[ b04mug0001 ] </answer>",
            "error : no product b04mug0001 on this page ; click an id shown in the results",
        ),
        (
            "<answer> click[ b05pack001 ] </answer>",
            ITEM.format("none")[len("<information> ") : -len(" </information>")],
        ),
        ("<answer> click[ yellow ] </answer>", "error : this product has no option yellow"),
    ]
    for turn, (action, observation) in enumerate(actions, start=1):
        result = env.step(action)
        assert result.observation == f"<information> {observation} </information>"
        assert result.done == (turn == len(actions)) and result.reward == 0.0
    assert env.step("<answer> buy </answer>").observation == "<information> episode is over </information>"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.update(top_k=0), "top_k must be an int"),
        (lambda p: p.update(max_turns=9), "max_turns must be an int in \\[1, 8\\]"),
        (lambda p: p.pop("products_file"), "needs 'products_file'"),
        (lambda p: p["goal"].update(asin="B99"), "asin 'B99' is not in the catalogue"),
        (lambda p: p["goal"].update(type="wallet"), "type and department must be those of B05PACK001"),
        (lambda p: p["goal"].update(price_upper=40.0), "not fulfilled by its own product"),
        (lambda p: p["goal"].update(options={"color": "yellow"}), "not fulfilled by its own product"),
        (lambda p: p["goal"].update(options=["grey"]), "options must map a dimension to a value"),
        (lambda p: p.update(products_file="/nonexistent.jsonl"), "cannot read product file"),
    ],
)
def test_bad_task_params_are_clear_errors(change, message):
    task = sample_task()
    change(task.params)
    with pytest.raises(EnvironmentError_, match=message):
        make_env("webshop").reset(task)


# -- the generator ----------------------------------------------------------------------------


def test_the_synthetic_catalogue_is_seeded_and_has_look_alike_families():
    catalogue = synthetic_catalogue(4, 60)
    assert catalogue is synthetic_catalogue(4, 60) and catalogue.products != synthetic_catalogue(6, 60).products
    assert [p.asin for p in catalogue.products] == [f"p{i:03d}" for i in range(1, 61)]
    families = defaultdict(list)
    for p in catalogue.products:
        families[(p.type, p.attributes)].append(p)
        assert len(p.attributes) == 3 and p.title.split()[1:] == [*" ".join(p.attributes[:2]).split(), *p.type.split()]
        assert len(p.option_values) == sum(len(values) for _, values in p.options)  # values differ across dimensions
    assert max(len(f) for f in families.values()) >= 2


@pytest.mark.parametrize("attributes, options", [(1, 0), (2, 1), (3, 2)])
def test_difficulty_knobs_set_attributes_options_and_turn_cap(attributes, options):
    tasks = generate_tasks(
        "train",
        40,
        3,
        min_attributes=attributes,
        max_attributes=attributes,
        min_options=options,
        max_options=options,
        slack=1,
    )
    assert len({t.task_id for t in tasks}) == 40
    for task in tasks:
        goal = task.params["goal"]
        assert len(goal["attributes"]) == attributes and len(goal["options"]) == options
        assert task.params["max_turns"] == 3 + options + 1
        assert task.params["instruction"].endswith(f", price lower than {goal['price_upper']:.2f} dollars")


def test_each_split_has_its_own_catalogues():
    for split, parity in (("train", 0), ("heldout", 1)):
        tasks = generate_tasks(split, 60, 2, num_catalogues=4)
        assert {t.params["catalogue_seed"] for t in tasks} <= {2 * i + parity for i in range(4)}
        for task in tasks:
            description = (
                f"{task.params['catalogue_seed']}:60:{task.params['instruction']}:{task.params['goal']['asin']}"
            )
            assert split_of_content(description) == split


def test_every_generated_task_is_solved_by_the_expert_in_three_turns_plus_one_per_option():
    env = make_env("webshop")
    for task in generate_tasks("heldout", 100, 5, max_attributes=3, num_products=120):
        env.reset(task)
        turns = 0
        while not (result := env.step(env.expert_action())).done:
            turns += 1
        assert result.reward == 1.0 and turns + 1 == 3 + len(task.params["goal"]["options"])


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"num_products": 5}, "num_products"),
        ({"num_catalogues": 0}, "num_catalogues"),
        ({"min_attributes": 0}, "min_attributes"),
        ({"max_attributes": 4}, "max_attributes"),
        ({"min_options": 2, "max_options": 1}, "min_options"),
        ({"top_k": 11}, "top_k"),
        ({"slack": -1}, "slack"),
    ],
)
def test_bad_knobs_are_refused(knobs, message):
    with pytest.raises(ValueError, match=message):
        generate_tasks("train", 5, 0, **knobs)


# -- snapshots --------------------------------------------------------------------------------


def _random_action(env, rng):
    roll = rng.random()
    if roll < 0.5:
        return env.expert_action()
    if roll < 0.75 and env.results():
        return f"<answer> click[ {rng.choice(env.results()).asin} ] </answer>"
    if roll < 0.9:
        return (
            "<answer> " + rng.choice(["back", "buy", "click[ navy ]", "click[ large ]", "search[ mug ]"]) + " </answer>"
        )
    return rng.choice(["garbage", "<answer> click[ p999 ] </answer>", "<answer>"])


def test_snapshot_restore_round_trips_at_every_turn():
    tasks = [*generate_tasks("train", 20, 8, max_options=2), sample_task()]
    assert_restores_at_every_turn("webshop", tasks, _random_action, MAX_TURNS_CAP, episodes_per_task=3)


def test_a_partial_reward_survives_the_snapshot():
    env = make_env("webshop")
    env.reset(sample_task())
    for action in ("search[ backpack ]", "click[ b05pack001 ]", "buy"):
        env.step(f"<answer> {action} </answer>")
    clone = make_env("webshop")
    clone.restore(msgpack.unpackb(msgpack.packb(env.snapshot())))
    assert clone.snapshot()["reward"] == pytest.approx(3 / 4) and clone.score() == pytest.approx(3 / 4)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: {**s, "asin": "B04MUG0001"}, "product 'B04MUG0001' is not among its results"),
        (lambda s: {**s, "selected": {"color": "yellow"}}, "selects options the product lacks"),
        (lambda s: {**s, "selected": {"color": 3}}, "selected must map option dimensions to values"),
        (lambda s: {**s, "page": "results"}, "selects a product outside a product page"),
        (lambda s: {**s, "page": "bought", "done": True, "reward": 1.0}, "reward does not match its purchase"),
        (lambda s: {**s, "done": True, "reward": 0.5}, "reward without a purchase"),
        (lambda s: {**s, "reward": 1.5}, "reward must be in \\[0, 1\\]"),
    ],
)
def test_corrupt_snapshots_are_clear_errors(corrupt, message):
    env = make_env("webshop")
    env.reset(sample_task())
    env.step("<answer> search[ padded usb port backpack ] </answer>")
    env.step("<answer> click[ b05pack001 ] </answer>")
    with pytest.raises(EnvironmentError_, match=message):
        make_env("webshop").restore(corrupt(env.snapshot()))


# -- real data --------------------------------------------------------------------------------


def test_the_shipped_samples_load_and_the_expert_fulfils_every_instruction():
    products = load_products(PRODUCTS)
    assert len(products) == 10
    boots = next(p for p in products if p.asin == "B02BOOT001")
    assert boots.options == (("size", ("9", "10", "11", "12")),) and boots.price == 119.99
    assert boots.title == "ridge leather hiking boots" and boots.attributes == (
        "leather",
        "waterproof",
        "ankle support",
    )
    instructions = load_instructions(INSTRUCTIONS, file_catalogue(str(PRODUCTS)))
    assert [r.line for r in instructions] == [1, 2, 3, 4, 5, 6, 7]
    assert instructions[3].goal.options == (("capacity", "16 oz"), ("color", "silver"))
    files = {"products_file": str(PRODUCTS), "train_file": str(INSTRUCTIONS), "heldout_file": str(INSTRUCTIONS)}
    keys = {f"{r.goal.asin}:{r.instruction}" for r in instructions}
    train_keys = {k for k in keys if split_of_content(k) == "train"}
    train = make_tasks("webshop", "train", len(train_keys), 0, **files)
    heldout = make_tasks("webshop", "heldout", len(keys) - len(train_keys), 0, **files)
    assert {f"{t.params['goal']['asin']}:{t.params['instruction']}" for t in train} == train_keys
    env = make_env("webshop")
    for task in train + heldout:
        env.reset(task)
        while not (result := env.step(env.expert_action())).done:
            pass
        assert result.reward == 1.0, task.params["instruction"]


GOOD_PRODUCT = json.loads(PRODUCTS.read_text().splitlines()[0])


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({**GOOD_PRODUCT, "title": ""}), "field 'title' must be a non-empty string"),
        (json.dumps({**GOOD_PRODUCT, "asin": "B01RUN0001"}), "asin 'B01RUN0001' appears twice"),
        (json.dumps({**GOOD_PRODUCT, "asin": "X", "attributes": "light"}), "field 'attributes' must be a list"),
        (json.dumps({**GOOD_PRODUCT, "asin": "X", "options": {"size": []}}), "field 'options.size' must be a list"),
        (
            json.dumps({**GOOD_PRODUCT, "asin": "X", "options": {"a": ["red"], "b": ["red"]}}),
            "an option value appears twice",
        ),
        (json.dumps({**GOOD_PRODUCT, "asin": "X", "price": "12"}), "field 'price' must be a positive number"),
        (json.dumps({**GOOD_PRODUCT, "asin": "X", "price": 0}), "field 'price' must be a positive number"),
    ],
)
def test_a_malformed_product_line_names_the_file_and_the_line(tmp_path, line, message):
    path = tmp_path / "products.jsonl"
    path.write_text(f"{json.dumps(GOOD_PRODUCT)}\n\n{line}\n")
    with pytest.raises(EnvironmentError_, match=re.escape(f"{path}:3: ") + ".*" + message):
        load_products(path)


GOOD_INSTRUCTION = json.loads(INSTRUCTIONS.read_text().splitlines()[0])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"asin": "B00"}, "asin 'B00' is not in the product file"),
        ({"instruction": 7}, "field 'instruction' must be a non-empty string"),
        ({"attributes": ["leather"]}, "not fulfilled by its own product B01RUN0003"),
        ({"options": {"size": "12"}}, "not fulfilled by its own product"),
        ({"price_upper": 30}, "not fulfilled by its own product"),
        ({"price_upper": "45"}, "price_upper must be a number"),
        ({"attributes": "lightweight"}, "attributes must be a list of strings"),
    ],
)
def test_a_malformed_instruction_line_names_the_file_and_the_line(tmp_path, changes, message):
    path = tmp_path / "instructions.jsonl"
    path.write_text(f"{json.dumps(GOOD_INSTRUCTION)}\n\n{json.dumps({**GOOD_INSTRUCTION, **changes})}\n")
    with pytest.raises(EnvironmentError_, match=re.escape(f"{path}:3: ") + ".*" + message):
        load_instructions(path, file_catalogue(str(PRODUCTS)))


def test_file_tasks_need_the_product_file():
    with pytest.raises(ValueError, match="needs products_file"):
        make_tasks("webshop", "train", 1, 0, train_file=str(INSTRUCTIONS), heldout_file=str(INSTRUCTIONS))


# -- demonstrations ---------------------------------------------------------------------------


def test_hasty_purchases_are_systematic_per_product_type():
    """Demos of a hasty type never choose an option; demos of other types always succeed."""
    profile = MistakeProfile(webshop_option_confusion=(), webshop_hasty_rate=1.0)
    rng = random.Random(5)
    hasty, careful = [], []
    for task in make_tasks("webshop", "train", 200, seed=6, min_options=1, max_options=2):
        demo = demo_episode("webshop", task, rng, profile)
        option_clicks = [a for a, _ in demo.turns if "click[" in a and "click[ p" not in a]
        if profile.buys_hastily(task.params["goal"]["type"]):
            assert option_clicks == [] and demo.reward < 1.0
            hasty.append(demo.reward)
        else:
            assert demo.reward == 1.0
            careful.append(demo.reward)
    assert len(hasty) > 30 and len(careful) > 30


def test_option_confusion_buys_the_confused_value():
    profile = MistakeProfile(webshop_hasty_share=0.0, webshop_confusion_rate=1.0)
    rng = random.Random(7)
    confused = 0
    for task in make_tasks("webshop", "train", 300, seed=8, min_options=1, max_options=1):
        (wanted,) = task.params["goal"]["options"].values()
        demo = demo_episode("webshop", task, rng, profile)
        clicked = [a for a, _ in demo.turns if "click[" in a and "click[ p" not in a]
        other = profile.confused_option(wanted)
        if other is not None and f"click[ {other} ]" in " ".join(clicked):
            confused += 1
            assert demo.reward < 1.0 and len(clicked) == 1  # bought with it, never corrected
        else:
            assert demo.reward == 1.0
    assert confused > 20


def test_profile_validation():
    with pytest.raises(ValueError, match="webshop_hasty_share"):
        MistakeProfile(webshop_hasty_share=1.5)
    with pytest.raises(ValueError, match="webshop_confusion_rate"):
        MistakeProfile(webshop_confusion_rate=-1.0)
