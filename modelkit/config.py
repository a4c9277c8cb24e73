"""Typed configuration of `tracerl model build` (the embedded model's recipe).

Every field shapes the built model, so the whole config (minus where it is cached and how
it logs) is part of the cache key.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from environments.demos import DEFAULT_PROFILE, DEMO_FORMAT_REVISIONS, MistakeProfile
from modelkit.architecture import ArchitectureConfig
from protocol.messages import check_plain_data
from tracerl.config import AtLeast1, Config, LogConfig, Positive


class MistakeConfig(Config, frozen=True):
    """The demonstrations' systematic mistakes (see ``environments.demos.MistakeProfile``)."""

    relation_confusion: list[tuple[str, str]] = msgspec.field(
        default_factory=lambda: list(DEFAULT_PROFILE.relation_confusion)
    )
    confusion_rate: float = DEFAULT_PROFILE.confusion_rate
    premature_answer_share: list[tuple[int, float]] = msgspec.field(
        default_factory=lambda: list(DEFAULT_PROFILE.premature_answer_share)
    )
    premature_consistency: float = DEFAULT_PROFILE.premature_consistency
    grid_move_confusion: list[tuple[str, str]] = msgspec.field(
        default_factory=lambda: list(DEFAULT_PROFILE.grid_move_confusion)
    )
    grid_confusion_rate: float = DEFAULT_PROFILE.grid_confusion_rate
    math_operation_confusion: list[tuple[str, str]] = msgspec.field(
        default_factory=lambda: list(DEFAULT_PROFILE.math_operation_confusion)
    )
    math_confusion_rate: float = DEFAULT_PROFILE.math_confusion_rate
    math_premature_share: list[tuple[int, float]] = msgspec.field(
        default_factory=lambda: list(DEFAULT_PROFILE.math_premature_share)
    )
    toolcall_reason_confusion: list[tuple[str, str]] = msgspec.field(
        default_factory=lambda: list(DEFAULT_PROFILE.toolcall_reason_confusion)
    )
    toolcall_confusion_rate: float = DEFAULT_PROFILE.toolcall_confusion_rate
    toolcall_premature_share: list[tuple[int, float]] = msgspec.field(
        default_factory=lambda: list(DEFAULT_PROFILE.toolcall_premature_share)
    )
    webshop_option_confusion: list[tuple[str, str]] = msgspec.field(
        default_factory=lambda: list(DEFAULT_PROFILE.webshop_option_confusion)
    )
    webshop_confusion_rate: float = DEFAULT_PROFILE.webshop_confusion_rate
    webshop_hasty_share: float = DEFAULT_PROFILE.webshop_hasty_share
    webshop_hasty_rate: float = DEFAULT_PROFILE.webshop_hasty_rate

    def profile(self) -> MistakeProfile:
        return MistakeProfile(
            relation_confusion=tuple(self.relation_confusion),
            confusion_rate=self.confusion_rate,
            premature_answer_share=tuple(self.premature_answer_share),
            premature_consistency=self.premature_consistency,
            grid_move_confusion=tuple(self.grid_move_confusion),
            grid_confusion_rate=self.grid_confusion_rate,
            math_operation_confusion=tuple(self.math_operation_confusion),
            math_confusion_rate=self.math_confusion_rate,
            math_premature_share=tuple(self.math_premature_share),
            toolcall_reason_confusion=tuple(self.toolcall_reason_confusion),
            toolcall_confusion_rate=self.toolcall_confusion_rate,
            toolcall_premature_share=tuple(self.toolcall_premature_share),
            webshop_option_confusion=tuple(self.webshop_option_confusion),
            webshop_confusion_rate=self.webshop_confusion_rate,
            webshop_hasty_share=self.webshop_hasty_share,
            webshop_hasty_rate=self.webshop_hasty_rate,
        )


#: Mistake fields that shape only one environment's demonstrations. A recipe whose demos
#: leave that environment out leaves them out of its cache key too, so adding an environment
#: (and its mistakes) never renames the models already built for the others.
ENVIRONMENT_MISTAKE_FIELDS: dict[str, tuple[str, ...]] = {
    "math": ("math_operation_confusion", "math_confusion_rate", "math_premature_share"),
    "toolcall": ("toolcall_reason_confusion", "toolcall_confusion_rate", "toolcall_premature_share"),
    "webshop": ("webshop_option_confusion", "webshop_confusion_rate", "webshop_hasty_share", "webshop_hasty_rate"),
}


class DemoConfig(Config, frozen=True):
    # The default run trains on multi-hop QA; one model per environment keeps the build within
    # 10 minutes on two cores (e.g. --set 'demos.environments=[sokoban]').
    environments: Annotated[list[str], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["multihop"])
    demos_per_env: AtLeast1 = 20000
    # Per environment, keyword knobs of ``make_tasks`` (absent: the environment's defaults).
    # Held-out questions are about knowledge bases the demos never show. Demos over the
    # environment's default 4 training knowledge bases let the model answer partly from
    # memorised facts (27% / 28% held-out greedy / sampled on 400 tasks); over 16 it reads the
    # passages and fails almost only where the injected mistakes steer it (40% / 44%).
    difficulty: dict[str, dict[str, Any]] = msgspec.field(default_factory=lambda: {"multihop": {"num_kbs": 16}})
    mistakes: MistakeConfig = MistakeConfig()
    seed: int = 0

    def __post_init__(self) -> None:
        check_plain_data(self.difficulty, "difficulty")


class TrainingConfig(Config, frozen=True):
    # On multi-hop QA the loss first sits on a plateau (names not yet copied from the context),
    # and when it leaves depends on the recipe and on the CPU's float rounding: with every space
    # its own token it took 385 steps on one machine and ~600 on another, where a fixed cosine
    # had already decayed (2% held-out instead of 22%); with the default tokenizer it takes
    # 100-200. So the peak rate is held until the loss drops below ``plateau_exit_loss`` and
    # the cosine decay then runs ``steps_after_plateau`` steps; ``steps`` caps the whole warm
    # start. plateau_exit_loss = 0 gives a plain cosine over ``steps``.
    steps: AtLeast1 = 1800
    plateau_exit_loss: Annotated[float, Meta(ge=0)] = 0.35
    steps_after_plateau: AtLeast1 = 700
    # Sequences are grouped by length; a batch holds at most this many tokens (padding included).
    batch_tokens: int = 4096
    learning_rate: float = 3e-3
    # A low floor sharpens the policy: sampled success then tracks greedy success.
    min_learning_rate: Positive = 3e-4
    warmup_steps: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_sequence_tokens: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_tokens < self.max_sequence_tokens:
            raise ValueError("training.batch_tokens must be >= training.max_sequence_tokens")
        if self.min_learning_rate > self.learning_rate:
            raise ValueError("need training.min_learning_rate <= training.learning_rate")


class ModelBuildConfig(Config, frozen=True):
    """`tracerl model build`: tokenizer, architecture, demonstrations and warm start."""

    log: LogConfig = LogConfig()
    # Where built models are cached; empty means $TRACERL_CACHE_DIR or ~/.cache/tracerl/models.
    cache_dir: str = ""
    # When set, the built directory is also copied here (e.g. a run's model directory).
    output_dir: str = ""
    tokenizer_vocab_size: int = 1024
    # "prefix": a word carries its leading space; "isolated": every space is its own token
    # (see modelkit.tokenizer).
    tokenizer_whitespace: str = "prefix"
    # Torch threads for the warm start; not part of the recipe: it changes speed, and float
    # rounding only as much as another CPU would (the plateau-held schedule absorbs both).
    # On a machine shared with other busy processes, 1 can be several times faster than 2.
    threads: int = 2
    architecture: ArchitectureConfig = ArchitectureConfig()
    demos: DemoConfig = DemoConfig()
    training: TrainingConfig = TrainingConfig()
    # Held-out episodes per environment scored (greedy and sampled, with transformers) after
    # the warm start and recorded in build-info.json; 0 skips it.
    eval_tasks: int = 0

    def __post_init__(self) -> None:
        from modelkit.tokenizer import WHITESPACE_MODES

        if self.tokenizer_whitespace not in WHITESPACE_MODES:
            raise ValueError(
                f"tokenizer_whitespace must be one of {WHITESPACE_MODES}, got {self.tokenizer_whitespace!r}"
            )

    def recipe(self) -> dict[str, Any]:
        """The fields that determine the built weights: the cache key's content."""
        demos = msgspec.to_builtins(self.demos)
        for env_name, names in ENVIRONMENT_MISTAKE_FIELDS.items():
            if env_name not in self.demos.environments:
                for name in names:
                    del demos["mistakes"][name]
        recipe = {
            "tokenizer_vocab_size": self.tokenizer_vocab_size,
            "tokenizer_whitespace": self.tokenizer_whitespace,
            "architecture": self.architecture,
            "demos": demos,
            "training": self.training,
        }
        # Only revised formats enter the key, so a revision leaves every other model's cache valid.
        revised = {
            name: DEMO_FORMAT_REVISIONS[name] for name in self.demos.environments if name in DEMO_FORMAT_REVISIONS
        }
        if revised:
            recipe["demo_format_revisions"] = revised
        return recipe
