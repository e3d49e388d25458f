"""gptq-windows: GPTQ's reference calibration recipe, both ways, without its off-by-one.

joined (wikitext2): the documents joined with a separator, tokenized once, windows at uniformly
random offsets; offsets run over every start where a whole window fits, ``[0, N - window]``.
documents (c4): draw a random document (with replacement) until one has at least ``window``
tokens, then a random window in it. A document of exactly ``window`` tokens is accepted and used
whole (optimum's port draws ``randint(0, -1)`` there and crashes). The draws are bounded.
With ``add_bos`` each window is BOS + (length - 1) tokens, as an inference sequence starts.
"""
from __future__ import annotations

import numpy as np

from engine.errors import SamplingError
from engine.sampling.context import Draft, SamplingContext, locate_token
from engine.sampling.recipes import reference_windows
from engine.sampling.specs import GptqWindowsSpec, Recipe, WindowMode
from engine.sampling.tokens import encode, encode_with_char_offsets


def _start_note(context: SamplingContext, spec: GptqWindowsSpec) -> str:
    if context.prefix:
        return (f"Each window is {context.tokenizer.decode(context.prefix)} + {spec.length - len(context.prefix):,} "
                "corpus tokens, as at inference.")
    return f"Each window is {spec.length:,} raw corpus tokens (no BOS), as in the original recipe."


def _joined(context: SamplingContext, spec: GptqWindowsSpec, rng: np.random.Generator) -> Draft:
    window = spec.length - len(context.prefix)
    text = spec.separator.join(context.texts)
    ids, token_chars = encode_with_char_offsets(context.tokenizer, text)
    if len(ids) < window:
        raise SamplingError(
            f"The joined corpus has only {len(ids):,} tokens and a window needs {window:,}. "
            "Use a shorter sequence length or a larger corpus."
        )
    starts = rng.integers(0, len(ids) - window + 1, size=spec.nsamples)  # inclusive of N - window
    sequences = [context.with_prefix(ids[s:s + window]) for s in starts]
    sizes = np.array([len(t) for t in context.texts], dtype=np.int64) + len(spec.separator)
    document_chars = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # where each document starts in the text
    provenance = [context.row(*locate_token(document_chars, token_chars, int(s))) for s in starts]
    notes = [
        (f"GPTQ wikitext2 recipe: {len(context.texts):,} documents joined with {spec.separator!r} "
         f"({len(ids):,} tokens), {spec.nsamples:,} windows at random offsets."),
        _start_note(context, spec),
    ]
    return Draft(sequences, provenance, notes)


def _documents(context: SamplingContext, spec: GptqWindowsSpec, rng: np.random.Generator) -> Draft:
    window = spec.length - len(context.prefix)
    long_enough = int((context.lengths >= window).sum())
    if long_enough == 0:
        raise SamplingError(
            f"No document has the {window:,} tokens a window needs (the longest has {int(context.lengths.max()):,}). "
            "Use mode 'joined' or the packed strategy, or a shorter sequence length."
        )
    draws: list[tuple[int, int]] = []
    attempts = 0
    while len(draws) < spec.nsamples:
        attempts += 1
        if attempts > spec.max_attempts:
            raise SamplingError(
                f"Only {len(draws)} of {spec.nsamples} windows found in {spec.max_attempts:,} document draws: "
                f"{long_enough:,} of {len(context.lengths):,} documents are long enough. Use mode 'joined' or packed."
            )
        document = int(rng.integers(0, len(context.lengths)))
        length = int(context.lengths[document])
        if length >= window:  # >=: a document of exactly `window` tokens is used whole
            draws.append((document, int(rng.integers(0, length - window + 1))))
    needed = sorted({d for d, _ in draws})
    tokens = dict(zip(needed, encode(context.tokenizer, [context.texts[d] for d in needed])))
    sequences = [context.with_prefix(tokens[d][s:s + window]) for d, s in draws]
    provenance = [context.row(d, s) for d, s in draws]
    notes = [
        (f"GPTQ c4 recipe: {attempts:,} document draws for {spec.nsamples:,} windows; {long_enough:,} of "
         f"{len(context.lengths):,} documents have at least {window:,} tokens."),
        _start_note(context, spec),
    ]
    return Draft(sequences, provenance, notes)


MODES = {WindowMode.JOINED: _joined, WindowMode.DOCUMENTS: _documents}


def gptq_windows(context: SamplingContext, spec: GptqWindowsSpec, rng: np.random.Generator) -> Draft:
    if spec.recipe is not Recipe.CALIBSCOPE:
        return reference_windows(context, spec)
    return MODES[spec.mode](context, spec, rng)
