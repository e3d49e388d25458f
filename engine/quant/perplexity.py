"""Perplexity on held-out text: non-overlapping windows, each starting as a sequence starts at
inference (the tokenizer's BOS), loss over every predicted real token."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine import guard
from engine.errors import CalibscopeError
from engine.hooks import base_model
from engine.models import LoadedModel
from engine.progress import Progress, no_progress
from engine.runner import batch_working_bytes
from engine.sampling import inference_prefix

HEAD_CHUNK = 256  # tokens per LM-head call: Gemma's 262k-word vocabulary makes full logits ~1 MB per token
CHARS_PER_TOKEN = 3  # a low estimate, so one tokenizer call usually covers what the windows need


@dataclass(frozen=True)
class EvaluationSet:
    """windows: [count, length] token ids (prefix + text tokens); name says where they came from."""

    windows: torch.Tensor
    name: str

    @property
    def tokens(self) -> int:
        """Tokens whose prediction is scored: all but the first of each window."""
        return int(self.windows.shape[0] * (self.windows.shape[1] - 1))

    @property
    def key(self) -> str:
        return hashlib.sha256(self.windows.numpy().tobytes()).hexdigest()[:16]


def evaluation_windows(tokenizer, texts: Sequence[str], length: int, count: int, name: str) -> EvaluationSet:
    """The first ``count`` windows of ``length`` tokens of the texts joined by blank lines (as GPTQ's
    wikitext2 evaluation joins the test split), each window prefix + the next text tokens."""
    prefix = inference_prefix(tokenizer)
    body = length - len(prefix)
    if body < 1 or count < 1:
        raise CalibscopeError(f"Evaluation windows of {length} tokens x {count}: use at least 2 tokens and 1 window.")
    joined = "\n\n".join(text for text in texts if text.strip())
    needed = body * count
    chars = needed * CHARS_PER_TOKEN
    while True:
        ids = tokenizer(joined[:chars], add_special_tokens=False).input_ids
        if len(ids) > needed or chars >= len(joined):
            break
        chars *= 2
    available = min(count, len(ids) // body)
    if available < 1:
        raise CalibscopeError(f"The evaluation text has {len(ids):,} tokens, fewer than one window of {body:,}; "
                              "use shorter windows or more held-out text.")
    rows = [prefix + ids[i * body:(i + 1) * body] for i in range(available)]
    return EvaluationSet(torch.tensor(rows, dtype=torch.int64, device="cpu"), name)


def output_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits for final hidden states (with Gemma-2-style soft-capping where configured)."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def negative_log_likelihood(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over scored tokens (a real token predicted from a real one), as a
    float64 tensor on the model's device. ``mask`` lives on the host, where the scored positions
    are found without waiting for the device."""
    hidden = base_model(model)(input_ids=ids, attention_mask=mask.to(ids.device), use_cache=False).last_hidden_state
    scored = (mask[:, 1:] & mask[:, :-1]).reshape(-1)
    scored_positions = torch.nonzero(scored).flatten().to(hidden.device)
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, scored_positions)
    targets = ids[:, 1:].reshape(-1).index_select(0, scored_positions)
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    for start in range(0, states.shape[0], HEAD_CHUNK):
        logits = output_logits(model, states[start:start + HEAD_CHUNK])
        total += torch.nn.functional.cross_entropy(logits, targets[start:start + HEAD_CHUNK], reduction="sum").double()
    return total


def perplexity(loaded: LoadedModel, evaluation: EvaluationSet, batch_size: int = 4,
               progress: Progress = no_progress) -> float:
    """exp(mean NLL) over the evaluation windows; the device is read once, at the end."""
    loaded.require_resident("Perplexity")
    device = next(loaded.model.parameters()).device
    windows = evaluation.windows
    total = torch.zeros((), dtype=torch.float64, device=device)
    # one batch of windows through the blocks, and the head's float32 logits for HEAD_CHUNK tokens at a time
    working = batch_working_bytes(loaded, min(batch_size, windows.shape[0]), windows.shape[1]) + \
        HEAD_CHUNK * loaded.info.vocab_size * 4 * 3
    with guard.current().reserve_memory("Perplexity", working), loaded.lock, torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            chunk = windows[start:start + batch_size]
            total += negative_log_likelihood(loaded.model, chunk.to(device), torch.ones_like(chunk))
            done = min(start + batch_size, windows.shape[0])
            progress(done / windows.shape[0], f"Perplexity: window {done} of {windows.shape[0]}")
    return math.exp(float(total) / evaluation.tokens)
