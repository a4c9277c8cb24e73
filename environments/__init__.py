"""Multi-turn text environments: multi-hop search QA, FrozenLake, Sokoban, and local
Search-R1 datasets, all speaking one tag format (see ``environments.tags``)."""

from .base import Environment, EnvironmentError_, StepResult
from .registry import env_names, make_env, make_tasks
from .tags import ACTION_STOP_STRINGS, ALL_TAGS

#: Every tag string any environment uses; the tokenizer makes each one a special token.
SPECIAL_TOKENS: tuple[str, ...] = ALL_TAGS
#: Strings that end an action in every environment.
STOP_STRINGS: tuple[str, ...] = ACTION_STOP_STRINGS

__all__ = [
    "SPECIAL_TOKENS",
    "STOP_STRINGS",
    "Environment",
    "EnvironmentError_",
    "StepResult",
    "env_names",
    "make_env",
    "make_tasks",
]
