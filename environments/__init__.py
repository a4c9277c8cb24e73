"""Multi-turn text environments: multi-hop search QA, FrozenLake, Sokoban, local Search-R1
datasets, word problems with a calculator, function calling against a stateful store API, the
BFCL multi-turn benchmark and a WebShop-style store, all speaking one tag format (see
``environments.tags``)."""

from .base import Environment, EnvironmentError_, StepResult
from .registry import env_names, env_special_tokens, make_env, make_tasks
from .tags import ACTION_STOP_STRINGS, ALL_TAGS, CALCULATOR_STOP_STRINGS, STORE_STOP_STRINGS, TOOL_CALL_STOP_STRINGS

#: Every tag string any environment uses; the tokenizer makes each one a special token.
SPECIAL_TOKENS: tuple[str, ...] = ALL_TAGS
#: Every string that ends an action in some environment.
STOP_STRINGS: tuple[str, ...] = tuple(
    dict.fromkeys(ACTION_STOP_STRINGS + CALCULATOR_STOP_STRINGS + TOOL_CALL_STOP_STRINGS + STORE_STOP_STRINGS)
)

__all__ = [
    "SPECIAL_TOKENS",
    "STOP_STRINGS",
    "Environment",
    "EnvironmentError_",
    "StepResult",
    "env_names",
    "env_special_tokens",
    "make_env",
    "make_tasks",
]
