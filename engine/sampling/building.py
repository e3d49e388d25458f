"""Build a calibration set from a corpus and a tokenizer, reproducibly, and rebuild it from its manifest.

``build`` renders and measures the corpus once (batched tokenization), dispatches to the strategy
named by the spec's type, and wraps the result with a manifest. Every strategy is a function of
(context, spec, rng) that returns the sequences and their provenance.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from engine.corpus import column
from engine.errors import SamplingError
from engine.progress import Progress, no_progress, scaled
from engine.sampling import manifest as manifests
from engine.sampling.calibration_set import CalibrationSet
from engine.sampling.context import SamplingContext
from engine.sampling.manifest import Manifest
from engine.sampling.registry import REGISTRY, spec_from_params
from engine.sampling.specs import SamplingSpec
from engine.sampling.tokens import ChatFormat, chat_format, inference_prefix, pad_id, render_texts, token_lengths


def _clamp(spec: SamplingSpec, max_positions: int | None) -> tuple[SamplingSpec, list[str]]:
    if max_positions is None or spec.length <= max_positions:
        return spec, []
    note = f"Sequence length {spec.length:,} exceeds the model's {max_positions:,} positions; clamped to {max_positions:,}."
    return spec.with_length(max_positions), [note]


def _context(dataset, tokenizer, spec: SamplingSpec, progress: Progress, model=None) -> SamplingContext:
    prefix = inference_prefix(tokenizer) if spec.add_bos else []
    if spec.length <= len(prefix):
        raise SamplingError(f"A sequence length of {spec.length} leaves no room after the {len(prefix)} start token(s).")
    texts = render_texts(dataset, tokenizer, spec.chat_template)
    bos_text = tokenizer.bos_token if prefix else None
    if bos_text:  # a chat template that writes BOS itself would otherwise give two
        texts = [t.removeprefix(bos_text) for t in texts]
    return SamplingContext(
        dataset=dataset, tokenizer=tokenizer, texts=texts, sources=column(dataset, "source"), prefix=prefix,
        lengths=token_lengths(tokenizer, texts, progress), eos_id=tokenizer.eos_token_id, model=model,
    )


def build(
    dataset, tokenizer, spec: SamplingSpec, *, max_positions: int | None = None, corpus_label: str = "",
    progress: Progress = no_progress, model=None,
) -> CalibrationSet:
    """Build the calibration set ``spec`` describes from ``dataset`` (text, source, row_id).

    Deterministic given the spec (its seed included), the corpus and the tokenizer. Sequence
    lengths above ``max_positions`` are clamped with a note. Raises SamplingError when the corpus
    cannot give what is asked at all; returns fewer samples, with a note, when it gives some.
    ``model`` (the LoadedModel) is needed by the strategies that run it (``needs_model`` in the registry).
    """
    if len(dataset) == 0:
        raise SamplingError("The corpus is empty: load a corpus with at least one document.")
    spec, notes = _clamp(spec, max_positions)
    strategy = REGISTRY[spec.strategy]
    if strategy.needs_model and model is None:
        raise SamplingError(f"The {spec.strategy.value} strategy runs the target model: pass model= to build().")
    context = _context(dataset, tokenizer, spec, scaled(progress, 0.0, 0.8), model)
    chats = chat_format(dataset, tokenizer, spec.chat_template)
    if chats is ChatFormat.PLAIN and spec.chat_template:
        notes.append("The chat records were rendered as plain 'role: content' text: this tokenizer has no chat template.")
    progress(0.8, f"Sampling ({spec.strategy.value})")
    draft = strategy.builder(context, spec, np.random.default_rng(spec.seed))
    if not draft.sequences:
        floor = getattr(spec, "min_tokens", None)
        why = (f" Documents of fewer than {floor} tokens are not drawn: lower min_tokens, or use a corpus with longer documents."
               if floor else "")
        raise SamplingError(f"No calibration sequence could be built from this corpus with these settings.{why}")
    progress(0.95, "Hashing the manifest")
    manifest = Manifest(
        strategy=spec.strategy.value,
        params=json.loads(json.dumps(dataclasses.asdict(spec))),  # JSON-normal: equal to its own round trip
        seed=spec.seed,
        corpus={"label": corpus_label, "documents": len(dataset), "sha256": manifests.corpus_fingerprint(context.texts),
                "chat_template": spec.chat_template, "chat_format": chats.value},
        tokenizer=manifests.tokenizer_identity(tokenizer, context.prefix),
        rows=[{"row_id": p.row_id, "offset": p.token_offset, "tokens": len(s)}
              for p, s in zip(draft.provenance, draft.sequences)],
        token_sha256=manifests.token_hash(draft.sequences),
        samples=len(draft.sequences),
        tokens=int(sum(len(s) for s in draft.sequences)),
        notes=notes + draft.notes,
    )
    progress(1.0, f"Built {len(draft.sequences):,} samples")
    return CalibrationSet(
        sequences=draft.sequences, provenance=draft.provenance, spec=spec, asked=spec.nsamples,
        pad_token_id=pad_id(tokenizer), padding_side=tokenizer.padding_side, manifest=manifest,
        notes=notes + draft.notes, buckets=draft.buckets, corpus_lengths=context.lengths, selection=draft.selection,
    )


def spec_from_manifest(manifest: Manifest) -> SamplingSpec:
    """The spec a manifest records (manifests of earlier releases included)."""
    try:
        return spec_from_params(manifest.strategy, manifest.params, section="manifest")
    except (ValueError, TypeError) as error:
        raise SamplingError(f"The manifest's strategy or parameters are not understood ({error}).") from None


def rebuild(manifest: Manifest, dataset, tokenizer, progress: Progress = no_progress, model=None) -> CalibrationSet:
    """Rebuild a set from its manifest and check it is the same, token for token (``model`` for the
    strategies that run it)."""
    rendered = render_texts(dataset, tokenizer, manifest.corpus.get("chat_template", True))
    manifest.check_inputs(manifests.corpus_fingerprint(rendered), manifests.vocabulary_hash(tokenizer))
    rebuilt = build(dataset, tokenizer, spec_from_manifest(manifest), corpus_label=manifest.corpus.get("label", ""),
                    progress=progress, model=model)
    if rebuilt.manifest.token_sha256 != manifest.token_sha256:
        raise SamplingError("The rebuilt set differs from the manifest's tokens (a different tokenizer or library version?).")
    return rebuilt
