"""Manifest: everything needed to rebuild a calibration set bit for bit, and to check that it was.

It records the strategy and every parameter, the seed, the corpus identity (a hash of its
documents), the tokenizer's name and a hash of its vocabulary, the rows and offsets used, and the
sha256 of the token ids.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.errors import SamplingError

FORMAT_VERSION = 1


def corpus_fingerprint(texts: Sequence[str]) -> str:
    """sha256 over the documents in order (length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def vocabulary_hash(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (the tokens in id order) and its special tokens.

    Tokens are written in id order, NUL-separated, instead of sorting and JSON-encoding the
    token -> id map: the same information, 4x faster on Gemma's 262k tokens.
    """
    vocab = tokenizer.get_vocab()
    by_id = [""] * (max(vocab.values(), default=-1) + 1)
    for token, index in vocab.items():
        by_id[index] = token
    digest = hashlib.sha256("\x00".join(by_id).encode("utf-8", "surrogatepass"))
    digest.update(json.dumps(tokenizer.all_special_tokens).encode("utf-8"))
    return digest.hexdigest()


def token_hash(sequences: Sequence[np.ndarray]) -> str:
    """sha256 of the token ids as int64, each sequence length-prefixed."""
    digest = hashlib.sha256()
    for sequence in sequences:
        digest.update(len(sequence).to_bytes(8, "little"))
        digest.update(np.ascontiguousarray(sequence, dtype=np.int64).tobytes())
    return digest.hexdigest()


def tokenizer_identity(tokenizer, prefix: list[int]) -> dict:
    return {
        "name": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_sha256": vocabulary_hash(tokenizer),
        "prefix_ids": list(prefix),
        "prefix_text": tokenizer.decode(prefix) if prefix else "",
        "padding_side": tokenizer.padding_side,
    }


@dataclass(frozen=True)
class Manifest:
    strategy: str
    params: dict
    seed: int
    corpus: dict
    tokenizer: dict
    rows: list[dict]
    token_sha256: str
    samples: int
    tokens: int
    notes: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as error:
            raise SamplingError(f"This is not a calibscope manifest ({error}).") from None

    def check_inputs(self, corpus_sha256: str, tokenizer_sha256: str) -> None:
        """Raise SamplingError naming what differs if the corpus or tokenizer is not the recorded one."""
        if corpus_sha256 != self.corpus["sha256"]:
            raise SamplingError(
                f"The corpus differs from the one in the manifest ({self.corpus.get('label', '?')}, "
                f"{self.corpus.get('documents', '?')} documents, sha256 {self.corpus['sha256'][:12]}…). "
                "Load the same corpus to reproduce this set."
            )
        if tokenizer_sha256 != self.tokenizer["vocab_sha256"]:
            raise SamplingError(
                f"The tokenizer differs from the one in the manifest ({self.tokenizer['name']}). "
                "Load the same model to reproduce this set."
            )
