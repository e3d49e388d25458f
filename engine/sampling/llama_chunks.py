"""llama-chunks: the chunks llama-imatrix and llama-perplexity evaluate, token for token.

llama.cpp tokenizes the whole text once with its special tokens (``[BOS] + ids``), cuts
``n_chunk = len // n_ctx`` consecutive chunks of ``n_ctx`` tokens and overwrites the first token
of each with BOS. So chunk i is BOS + ids[i·n_ctx : (i+1)·n_ctx - 1]: one corpus token at every
chunk boundary is never seen. ``llama-imatrix -f file.txt`` drops one trailing newline of the file.
"""
from __future__ import annotations

import numpy as np

from engine.sampling.context import Draft, SamplingContext, locate_token
from engine.sampling.specs import LlamaChunksSpec
from engine.sampling.tokens import encode_with_char_offsets


def llama_chunk_starts(total_tokens: int, n_ctx: int, prefix: int, limit: int) -> list[int]:
    """Where each chunk's corpus tokens start in the text's ids (the prefix occupies ``prefix``
    positions of the first chunk's window, and of every chunk's by overwriting)."""
    chunks = min(limit, (total_tokens + prefix) // n_ctx)
    return [i * n_ctx for i in range(chunks)]


def llama_chunks(context: SamplingContext, spec: LlamaChunksSpec, rng: np.random.Generator) -> Draft:
    text = spec.separator.join(context.texts)
    ids, token_chars = encode_with_char_offsets(context.tokenizer, text)
    prefix = len(context.prefix)
    body = spec.length - prefix
    starts = llama_chunk_starts(len(ids), spec.length, prefix, spec.nsamples)
    sequences = [context.with_prefix(ids[s:s + body]) for s in starts]
    sizes = np.array([len(t) for t in context.texts], dtype=np.int64) + len(spec.separator)
    document_chars = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    provenance = [context.row(*locate_token(document_chars, token_chars, s)) for s in starts]
    available = (len(ids) + prefix) // spec.length
    notes = [(f"llama.cpp chunks: {len(ids) + prefix:,} tokens make {available:,} chunks of {spec.length:,}; "
              f"the first {len(sequences):,} are used, in order.")]
    if len(sequences) < spec.nsamples:
        notes.append(f"The corpus holds {available:,} chunks, fewer than the {spec.nsamples:,} asked.")
    return Draft(sequences, provenance, notes)
