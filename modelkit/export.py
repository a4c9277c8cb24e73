"""Writing and checking Hugging Face-format model directories."""

from __future__ import annotations

from pathlib import Path

from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

REQUIRED_FILES = ("config.json",)


class ModelDirError(ValueError):
    """A path that is not a usable model directory; the message is one line."""


def save_model_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """config.json, model.safetensors, tokenizer files and generation_config.json.

    The generation config carries only the token ids: vLLM adopts sampling defaults from
    it, and the sampling parameters belong to the caller.
    """
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def check_model_dir(path: str | Path) -> Path:
    """The directory as a Path, or a ModelDirError saying what is missing."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise ModelDirError(f"model directory {directory} does not exist")
    if not directory.is_dir():
        raise ModelDirError(f"model path {directory} is not a directory")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise ModelDirError(f"{directory} is not a Hugging Face model directory (no {', '.join(missing)})")
    return directory
