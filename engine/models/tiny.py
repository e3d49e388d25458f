"""Tiny random models built from a config, with an in-memory byte-level tokenizer.

They load instantly and offline: for tests and for trying the dashboard without waiting. The
weights are random (seeded, so every build is identical), the tokenizer maps each UTF-8 byte to
one token and adds BOS, as most real tokenizers do.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
MAX_POSITIONS = 2048


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per byte (ByteLevel alphabet) plus pad/bos/eos/unk; adds BOS."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_POSITIONS,
        padding_side="right",
    )


def _tiny_llama(vocab_size: int) -> PreTrainedModel:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _tiny_gpt2(vocab_size: int) -> PreTrainedModel:
    # GPT-2 stores its projections as transformers' Conv1D (weight shape in x out).
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=MAX_POSITIONS,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config)


def _tiny_gemma3(vocab_size: int) -> PreTrainedModel:
    # Sliding-window and global layers alternate: blocks are called with different masks and rotary
    # embeddings, which the block-by-block runner must hand each block as the whole model would.
    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=16, max_position_embeddings=MAX_POSITIONS,
        layer_types=["sliding_attention", "full_attention"] * 2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return Gemma3ForCausalLM(config)


def _tiny_qwen3_moe(vocab_size: int) -> PreTrainedModel:
    # Mixture of experts: 4 experts, 2 per token, fused gate/up weights per expert (transformers 5).
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, moe_intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
        max_position_embeddings=MAX_POSITIONS, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return Qwen3MoeForCausalLM(config)


def _tiny_mixtral(vocab_size: int) -> PreTrainedModel:
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=MAX_POSITIONS,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return MixtralForCausalLM(config)


def _tiny_gpt_oss(vocab_size: int) -> PreTrainedModel:
    # GPT-OSS's experts: weights stored transposed, gate and up columns interleaved, biases, a clamped gate
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=16,
        max_position_embeddings=131_072, pad_token_id=0, bos_token_id=1, eos_token_id=2,  # its YaRN rope: 4,096 x 32
    )
    return GptOssForCausalLM(config)


def _tiny_llama4(vocab_size: int) -> PreTrainedModel:
    # Llama 4's experts: stored transposed ([E, H, 2I], gate columns first), called with the block's tokens
    # repeated per expert and already scaled by the router's sigmoid scores (zero where not chosen)
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    config = Llama4TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=24, intermediate_size_mlp=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
        interleave_moe_layer_step=1, attention_chunk_size=64, max_position_embeddings=MAX_POSITIONS, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )
    return Llama4ForCausalLM(config)


TINY_MODELS: dict[str, Callable[[int], PreTrainedModel]] = {
    "tiny-random-llama": _tiny_llama,
    "tiny-random-gpt2": _tiny_gpt2,
    "tiny-random-gemma3": _tiny_gemma3,
    "tiny-random-qwen3-moe": _tiny_qwen3_moe,
    "tiny-random-mixtral": _tiny_mixtral,
    "tiny-random-gpt-oss": _tiny_gpt_oss,
    "tiny-random-llama4": _tiny_llama4,
}


def build_tiny(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build a tiny model and its tokenizer; the same seed always gives the same weights."""
    tokenizer = byte_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TINY_MODELS[name](len(tokenizer))
    return model, tokenizer
