"""Published GPTQ calibration recipes, reproduced bit for bit from the same rows, tokenizer and seed.

``gptq-reference``: the GPTQ paper's ``datautils.py`` (IST-DASLab/gptq): wikitext2 and ptb rows
joined with "\\n\\n", c4 documents drawn until one has *more than* ``seqlen`` tokens.
``optimum``: ``optimum.gptq.data`` (get_dataset): wikitext2 rows joined with "" after each empty
row is replaced by " \\n", ptb rows joined with " ", c4 and c4-new (the same code) accept a document
of *at least* ``seqlen`` tokens.

All of them: Python's ``random`` seeded with the seed, the joined text tokenized once with the
tokenizer's special tokens (a BOS only at the very start), window starts
``random.randint(0, n - seqlen - 1)`` (the last start, n - seqlen, is never drawn), windows of raw
tokens (no BOS added). Their quirk, kept and named: a c4 document of exactly ``seqlen`` tokens
passes optimum's test and then ``randint(0, -1)`` fails; calibscope raises a SamplingError there
instead of Python's ValueError. The references load their tokenizer with ``use_fast=False``: use
the same tokenizer class to get their token ids.

For exact reproduction give the dataset's rows as they are (``rows_dataset``): calibscope's
corpus loaders clean documents (strip, drop empty rows), which changes the joined text.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import datasets
import numpy as np

from engine.errors import SamplingError
from engine.sampling.context import Draft, SamplingContext, locate_token
from engine.sampling.specs import GptqWindowsSpec, Recipe


@dataclass(frozen=True)
class ReferenceRecipe:
    """How a recipe cuts windows: rows mapped then joined with ``separator`` (joined recipes), or
    documents drawn until ``accept(tokens, seqlen)`` (c4 recipes)."""

    origin: str
    separator: str | None = None  # None: documents, c4 style
    map_row: Callable[[str], str] = lambda row: row
    accept: Callable[[int, int], bool] = lambda tokens, seqlen: tokens > seqlen


def _empty_as_newline(row: str) -> str:
    return " \n" if row == "" else row


RECIPES = {
    Recipe.GPTQ_WIKITEXT2: ReferenceRecipe("gptq datautils.get_wikitext2", separator="\n\n"),
    Recipe.GPTQ_PTB: ReferenceRecipe("gptq datautils.get_ptb", separator="\n\n"),
    Recipe.GPTQ_C4: ReferenceRecipe("gptq datautils.get_c4 (a document must have > seqlen tokens)"),
    Recipe.OPTIMUM_WIKITEXT2: ReferenceRecipe("optimum.gptq.data.get_wikitext2", separator="", map_row=_empty_as_newline),
    Recipe.OPTIMUM_PTB: ReferenceRecipe("optimum.gptq.data.get_ptb", separator=" "),
    Recipe.OPTIMUM_C4: ReferenceRecipe("optimum.gptq.data.get_c4 (>= seqlen tokens)", accept=lambda n, seqlen: n >= seqlen),
    Recipe.OPTIMUM_C4_NEW: ReferenceRecipe("optimum.gptq.data.get_c4_new (the same code as its get_c4)",
                                           accept=lambda n, seqlen: n >= seqlen),
}


def rows_dataset(rows: list[str], source: str = "rows") -> datasets.Dataset:
    """A corpus of exactly these rows (empty ones included), for a recipe to join as its reference does."""
    return datasets.Dataset.from_dict({"text": list(rows), "source": [source] * len(rows), "row_id": list(range(len(rows)))})


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, verbose=False).input_ids  # with special tokens, as ``tokenizer(text, return_tensors="pt")``


def _ids_and_offsets(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The ids as ``_ids`` gives them and each token's first character (special tokens at 0), in
    one tokenization; no offsets from a slow tokenizer."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return np.asarray(_ids(tokenizer, text), dtype=np.int64), None
    encoded = tokenizer(text, verbose=False, return_offsets_mapping=True)
    return (np.asarray(encoded.input_ids, dtype=np.int64),
            np.array([start for start, _ in encoded.offset_mapping], dtype=np.int64))


def _joined(context: SamplingContext, spec: GptqWindowsSpec, recipe: ReferenceRecipe, draw: random.Random) -> Draft:
    rows = [recipe.map_row(row) for row in context.texts]
    ids, offsets = _ids_and_offsets(context.tokenizer, recipe.separator.join(rows))
    if len(ids) < spec.length + 1:
        raise SamplingError(f"The joined rows have {len(ids):,} tokens; {recipe.origin} needs more than {spec.length:,}.")
    starts = [draw.randint(0, len(ids) - spec.length - 1) for _ in range(spec.nsamples)]
    sizes = np.array([len(row) for row in rows], dtype=np.int64) + len(recipe.separator)
    document_chars = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    provenance = [context.row(*locate_token(document_chars, offsets, s)) for s in starts]
    return Draft([ids[s:s + spec.length] for s in starts], provenance,
                 [(f"{spec.recipe.value}: {recipe.origin}, {len(rows):,} rows joined with {recipe.separator!r} "
                   f"({len(ids):,} tokens), {spec.nsamples:,} windows, Python random seeded with {spec.seed}.")])


def _documents(context: SamplingContext, spec: GptqWindowsSpec, recipe: ReferenceRecipe, draw: random.Random) -> Draft:
    sequences, provenance, attempts = [], [], 0
    for _ in range(spec.nsamples):
        while True:
            attempts += 1
            if attempts > spec.max_attempts:
                raise SamplingError(f"{recipe.origin}: no usable document in {spec.max_attempts:,} draws; the reference "
                                    "would loop forever here. Use a shorter length or longer documents.")
            document = draw.randint(0, len(context.texts) - 1)
            ids = _ids(context.tokenizer, context.texts[document])
            if recipe.accept(len(ids), spec.length):
                break
        if len(ids) == spec.length:
            raise SamplingError(f"{recipe.origin} drew document {document}, which has exactly {spec.length:,} tokens: the "
                                f"reference then calls random.randint(0, -1) and fails (its quirk, kept). Use another seed.")
        start = draw.randint(0, len(ids) - spec.length - 1)
        sequences.append(np.asarray(ids[start:start + spec.length], dtype=np.int64))
        provenance.append(context.row(document, start))
    return Draft(sequences, provenance, [(f"{spec.recipe.value}: {recipe.origin}, {attempts:,} document draws for "
                                          f"{spec.nsamples:,} windows, Python random seeded with {spec.seed}.")])


def reference_windows(context: SamplingContext, spec: GptqWindowsSpec) -> Draft:
    recipe = RECIPES[spec.recipe]
    draw = random.Random(spec.seed)  # the references seed the module-level random; the same sequence
    return (_joined if recipe.separator is not None else _documents)(context, spec, recipe, draw)
