"""Tokenization exactly as at inference, done in batches.

A calibration sequence must look like a sequence the model sees in use. Tokenizers add special
tokens at the start (Gemma and Llama add BOS); ``inference_prefix`` finds them once, documents are
tokenized without special tokens in batches, and each sequence is ``prefix + tokens``. For an
ordinary document that is the same as ``tokenizer(text).input_ids`` (tested), and it lets windows
cut from the middle of a document start with BOS too.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from enum import Enum

import numpy as np
from transformers import PreTrainedTokenizerBase

from engine.corpus import column
from engine.memo import OwnerMemo
from engine.progress import Progress, no_progress
from engine.sampling.manifest import corpus_fingerprint

CHUNK = 2048  # documents per tokenizer call: big enough to amortize, small enough to report progress
PROBE_TEXT = "Calibration probe"


def inference_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids the tokenizer puts before the text at inference (e.g. [BOS]), possibly []."""
    with_special = tokenizer(PROBE_TEXT).input_ids
    plain = tokenizer(PROBE_TEXT, add_special_tokens=False).input_ids
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return list(with_special[:start])
    return []


class ChatFormat(str, Enum):
    """How chat records became text: no chat records, the tokenizer's chat template, or plain
    'role: content' text (asked not to use the template, or the tokenizer has none)."""

    NONE = "no chat records"
    TEMPLATE = "chat template"
    PLAIN = "plain 'role: content' text"


def chat_format(dataset, tokenizer: PreTrainedTokenizerBase, chat_template: bool) -> ChatFormat:
    if "messages" not in dataset.column_names or not any(column(dataset, "messages")):
        return ChatFormat.NONE
    return ChatFormat.TEMPLATE if chat_template and getattr(tokenizer, "chat_template", None) else ChatFormat.PLAIN


def render_texts(dataset, tokenizer: PreTrainedTokenizerBase, chat_template: bool) -> list[str]:
    """The text to tokenize per document: chat ``messages`` through the chat template when asked."""
    texts = column(dataset, "text")
    if chat_format(dataset, tokenizer, chat_template) is not ChatFormat.TEMPLATE:
        return texts
    for index, messages in enumerate(column(dataset, "messages")):
        if messages:
            texts[index] = tokenizer.apply_chat_template(json.loads(messages), tokenize=False)
    return texts


# A comparison builds many sets from one corpus: each tokenizer object remembers the lengths of the
# last few corpora it measured (by content), and forgets them with the tokenizer.
MEASURED_CORPORA = 4
_MEASURED: OwnerMemo[np.ndarray] = OwnerMemo(keep=MEASURED_CORPORA)


def token_lengths(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], progress: Progress = no_progress) -> np.ndarray:
    """Token count of each text (no special tokens); measured once per tokenizer and corpus."""
    key = (len(tokenizer), corpus_fingerprint(texts))
    lengths = _MEASURED.get_or_compute(tokenizer, key, lambda: _measure_lengths(tokenizer, texts, progress))
    progress(1.0, f"Token lengths of {len(texts):,} documents")
    return lengths.copy()


def _measure_lengths(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], progress: Progress) -> np.ndarray:
    """In batches, without building id lists in Python."""
    lengths = np.zeros(len(texts), dtype=np.int64)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    encode = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
    for start in range(0, len(texts), CHUNK):
        chunk = list(texts[start:start + CHUNK])
        if encode is not None:
            lengths[start:start + len(chunk)] = [len(encoding) for encoding in encode(chunk, add_special_tokens=False)]
        else:  # a slow (pure Python) tokenizer: no batch fast path exists
            lengths[start:start + len(chunk)] = [len(ids) for ids
                                                 in tokenizer(chunk, add_special_tokens=False, verbose=False).input_ids]
        progress(min(1.0, (start + len(chunk)) / max(len(texts), 1)),
                 f"Tokenized {start + len(chunk):,} of {len(texts):,} documents")
    return lengths


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text (no special tokens), in batches."""
    encoded: list[np.ndarray] = []
    for start in range(0, len(texts), CHUNK):
        # verbose=False: documents longer than the model's maximum are windowed by the strategies
        batch = tokenizer(list(texts[start:start + CHUNK]), add_special_tokens=False, verbose=False).input_ids
        encoded.extend(np.asarray(ids, dtype=np.int64) for ids in batch)
    return encoded


def encode_with_char_offsets(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Token ids of one long text and each token's starting character (None for slow tokenizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return np.asarray(tokenizer(text, add_special_tokens=False, verbose=False).input_ids, dtype=np.int64), None
    encoding = backend.encode(text, add_special_tokens=False)
    starts = np.fromiter((start for start, _ in encoding.offsets), dtype=np.int64, count=len(encoding.offsets))
    return np.asarray(encoding.ids, dtype=np.int64), starts


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """A real pad id: the tokenizer's own, else EOS (the usual causal-LM fallback), else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
