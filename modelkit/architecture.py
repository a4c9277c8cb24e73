"""The tiny Qwen3 architecture of the embedded model.

Input and output embeddings are untied on purpose: vLLM's in-place weight reload does not
handle tied parameters, and the learner publishes new weights that actors reload in place.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase, Qwen3Config

from tracerl.config import AtLeast1, Config


class ArchitectureConfig(Config, frozen=True):
    hidden_size: AtLeast1 = 128
    num_layers: AtLeast1 = 4
    num_heads: AtLeast1 = 4
    num_kv_heads: AtLeast1 = 2
    head_dim: AtLeast1 = 32
    intermediate_size: AtLeast1 = 512
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.head_dim not in VLLM_CPU_HEAD_SIZES:
            raise ValueError(f"head_dim must be one of {VLLM_CPU_HEAD_SIZES} (vLLM CPU attention), not {self.head_dim}")


#: vLLM's CPU attention kernels accept only these head sizes (vllm-cpu 0.32); 16 fails at
#: the first forward pass with "Unsupported CPU attention configuration".
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

#: The smallest model the test fixtures build: enough to exercise every code path quickly.
#: head_dim is 32, not hidden/heads = 16, because of VLLM_CPU_HEAD_SIZES.
RANDOM_TEST_ARCHITECTURE = ArchitectureConfig(
    hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32, intermediate_size=128
)


def qwen3_config(arch: ArchitectureConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        head_dim=arch.head_dim,
        max_position_embeddings=arch.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
        tie_word_embeddings=False,
        use_sliding_window=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        dtype="float32",
        architectures=["Qwen3ForCausalLM"],
    )
