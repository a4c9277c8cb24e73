"""The Berkeley Function Calling Leaderboard's multi-turn data and API classes, read from the
installed ``bfcl-eval`` package.

``make data-bfcl`` installs that package without its dependencies (its pins conflict with
vLLM's), so only the parts that need none are used: the data files under ``bfcl_eval/data/``
and the stateful API modules under ``bfcl_eval/eval_checker/multi_turn_eval/func_source_code/``
(plain Python; the multi-turn ones import only the standard library, ``mpmath`` and each
other). The package's handlers, checker and constants are never imported: the checker's
definition of success is written again in ``environments.bfcl``.

Files read (one JSON object a line, although they are named ``.json``):

* ``BFCL_v4_multi_turn_base.json``: ``id``, ``question`` (per user turn, a list of messages),
  ``initial_config`` (per API class, the scenario its ``_load_scenario`` takes) and
  ``involved_classes``;
* ``possible_answer/BFCL_v4_multi_turn_base.json``: ``id`` and ``ground_truth`` (per user
  turn, the calls as Python call strings, such as ``"cd(folder='document')"``);
* ``multi_turn_func_doc/<class file>.json``: the function documents of one API class.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .base import EnvironmentError_
from .datafiles import json_lines

PACKAGE = "bfcl_eval"
DISTRIBUTION = "bfcl-eval"
INSTALL_HINT = "run make data-bfcl"
API_PACKAGE = f"{PACKAGE}.eval_checker.multi_turn_eval.func_source_code"
DATA_FILE = "BFCL_v4_multi_turn_base.json"


@dataclass(frozen=True)
class ApiSource:
    #: The module of ``API_PACKAGE`` that defines the class.
    module: str
    #: Its function documents under ``multi_turn_func_doc/``.
    doc_file: str
    #: Stateless classes get no scenario, as in BFCL's executor.
    stateless: bool = False


#: The API classes of the multi-turn categories (the package's other classes belong to its web
#: search and memory categories, whose modules need the dependencies left out).
API_CLASSES: dict[str, ApiSource] = {
    "GorillaFileSystem": ApiSource("gorilla_file_system", "gorilla_file_system.json"),
    "MathAPI": ApiSource("math_api", "math_api.json", stateless=True),
    "MessageAPI": ApiSource("message_api", "message_api.json"),
    "TwitterAPI": ApiSource("posting_api", "posting_api.json"),
    "TicketAPI": ApiSource("ticket_api", "ticket_api.json"),
    "TradingBot": ApiSource("trading_bot", "trading_bot.json"),
    "TravelAPI": ApiSource("travel_booking", "travel_booking.json"),
    "VehicleControlAPI": ApiSource("vehicle_control", "vehicle_control.json"),
}


@dataclass(frozen=True)
class BfclEntry:
    entry_id: str
    #: The user's message of each turn.
    user_turns: tuple[str, ...]
    #: ``initial_config`` as JSON, decoded afresh for every set of instances.
    initial_config_json: str
    involved_classes: tuple[str, ...]
    #: Per user turn, the ground-truth calls as Python call strings (a turn may have none).
    ground_truth: tuple[tuple[str, ...], ...]


def data_dir() -> Path:
    """``bfcl_eval/data`` of the installed package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EnvironmentError_(f"the bfcl environment needs the {DISTRIBUTION} package, not installed: {INSTALL_HINT}")
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (root / DATA_FILE).is_file():
        raise EnvironmentError_(
            f"{root / DATA_FILE} is missing: not the {DISTRIBUTION} version expected; {INSTALL_HINT}"
        )
    return root


@lru_cache(maxsize=1)
def load_entries() -> dict[str, BfclEntry]:
    """Every multi-turn base entry with its ground truth, by id; a malformed line raises
    ``EnvironmentError_`` naming the file and the line."""
    root = data_dir()
    questions_path, answers_path = root / DATA_FILE, root / "possible_answer" / DATA_FILE
    answers: dict[str, tuple[tuple[str, ...], ...]] = {}
    for number, record in json_lines(answers_path):
        turns: Any = record.get("ground_truth")
        if not isinstance(record.get("id"), str) or not _is_list_of(turns, lambda t: _is_list_of(t, _is_str)):
            raise EnvironmentError_(f"{answers_path}:{number}: need 'id' and 'ground_truth' (lists of call strings)")
        answers[record["id"]] = tuple(tuple(turn) for turn in turns)
    entries = {}
    for number, record in json_lines(questions_path):
        entry = _entry(record, answers, f"{questions_path}:{number}")
        entries[entry.entry_id] = entry
    return entries


def _entry(record: dict[str, Any], answers: dict[str, tuple[tuple[str, ...], ...]], where: str) -> BfclEntry:
    entry_id: Any = record.get("id")
    question: Any = record.get("question")
    config: Any = record.get("initial_config")
    classes: Any = record.get("involved_classes")
    if not isinstance(entry_id, str) or entry_id not in answers:
        raise EnvironmentError_(f"{where}: entry id {entry_id!r} has no ground truth")
    if not _is_list_of(question, lambda turn: turn != [] and _is_list_of(turn, _is_user_message)):
        raise EnvironmentError_(f"{where}: 'question' must list, per turn, user messages with string content")
    if not isinstance(config, dict):
        raise EnvironmentError_(f"{where}: 'initial_config' must be an object")
    if not _is_list_of(classes, lambda name: name in API_CLASSES) or not classes:
        raise EnvironmentError_(f"{where}: 'involved_classes' must name classes among {sorted(API_CLASSES)}")
    if len(answers[entry_id]) != len(question):
        raise EnvironmentError_(f"{where}: {len(question)} user turns but {len(answers[entry_id])} ground-truth turns")
    return BfclEntry(
        entry_id=entry_id,
        user_turns=tuple("\n".join(message["content"] for message in turn) for turn in question),
        initial_config_json=json.dumps(config),
        involved_classes=tuple(classes),
        ground_truth=answers[entry_id],
    )


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_list_of(value: Any, ok: Any) -> bool:
    return isinstance(value, list) and all(ok(item) for item in value)


def _is_user_message(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str)


@lru_cache(maxsize=len(API_CLASSES))
def function_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    """The function documents of one API class: ``name``, ``description`` and ``parameters``."""
    path = data_dir() / "multi_turn_func_doc" / API_CLASSES[class_name].doc_file
    docs = []
    for number, record in json_lines(path):
        parameters = record.get("parameters")
        if not isinstance(record.get("name"), str) or not isinstance(parameters, dict):
            raise EnvironmentError_(f"{path}:{number}: a function document needs 'name' and 'parameters'")
        docs.append({"name": record["name"], "description": record.get("description", ""), "parameters": parameters})
    return tuple(docs)


@lru_cache(maxsize=len(API_CLASSES))
def api_class(class_name: str) -> type:
    """The executable API class itself; a missing module or dependency names the fix."""
    module_name = f"{API_PACKAGE}.{API_CLASSES[class_name].module}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise EnvironmentError_(
            f"cannot import BFCL's {class_name} from {module_name} ({err}); {INSTALL_HINT}"
        ) from err
    return getattr(module, class_name)


def public_methods(class_name: str) -> tuple[str, ...]:
    """The names BFCL's executor lets a call reach on an instance: its methods not starting with ``_``."""
    members = inspect.getmembers(api_class(class_name), inspect.isfunction)
    return tuple(name for name, _ in members if not name.startswith("_"))


def new_instances(entry: BfclEntry) -> dict[str, Any]:
    """A fresh instance of every class the entry involves, loaded with its initial scenario."""
    config = json.loads(entry.initial_config_json)
    instances = {}
    for class_name in entry.involved_classes:
        instance = api_class(class_name)()
        if not API_CLASSES[class_name].stateless:
            instance._load_scenario(config.get(class_name, {}), long_context=False)
        instances[class_name] = instance
    return instances
