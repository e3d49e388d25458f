"""self-generated: calibration text sampled from the target model itself (no data needed).

Each sequence starts as inference does (BOS, then a prompt when given) and is extended token by
token with a KV cache; the temperature falls linearly from temperature_start to temperature_end
over the sequence (hot openings spread the samples over topics, cooler continuations keep them
fluent), sampling from the top_k tokens with a seeded generator. A sequence ends at EOS or at
``length`` tokens.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.errors import SamplingError
from engine.sampling.calibration_set import Provenance
from engine.sampling.context import Draft, SamplingContext
from engine.sampling.specs import SelfGeneratedSpec

SOURCE = "self-generated"


def temperature(step: int, steps: int, spec: SelfGeneratedSpec) -> float:
    fraction = step / max(steps - 1, 1)
    return spec.temperature_start + (spec.temperature_end - spec.temperature_start) * fraction


def _generate(loaded, start: list[int], rows: int, spec: SelfGeneratedSpec, generator: torch.Generator,
              eos: int | None) -> list[np.ndarray]:
    """``rows`` continuations of the same ``start`` tokens."""
    model = loaded.model
    device = next(model.parameters()).device
    ids = torch.tensor([start] * rows, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens, past = ids, None
    steps = spec.length - len(start)
    generated = []
    for step in range(steps):
        output = model(input_ids=tokens, past_key_values=past, use_cache=True)
        past = output.past_key_values
        logits = output.logits[:, -1].float() / temperature(step, steps, spec)
        top = torch.topk(logits, min(spec.top_k, logits.shape[-1]))
        choice = torch.multinomial(torch.softmax(top.values, -1).cpu(), 1, generator=generator).to(device)
        tokens = top.indices.gather(1, choice)
        generated.append(tokens[:, 0])
        if eos is not None:
            finished |= tokens[:, 0] == eos
            if bool(finished.all()):
                break
    body = torch.stack(generated, 1).cpu().numpy() if generated else np.zeros((rows, 0), dtype=np.int64)
    out = []
    for row in body:
        stop = np.flatnonzero(row == eos) if eos is not None else []
        out.append(np.concatenate([np.asarray(start, dtype=np.int64), row[: stop[0] + 1 if len(stop) else len(row)]]))
    return out


def self_generated(context: SamplingContext, spec: SelfGeneratedSpec, rng: np.random.Generator) -> Draft:
    if context.model is None:
        raise SamplingError("Self-generated text comes from the target model: pass the loaded model to build().")
    context.model.require_resident("Self-generated text")
    prompts = list(spec.prompts) or [""]
    starts = [context.prefix + context.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    if any(len(s) >= spec.length for s in starts):
        raise SamplingError(f"A prompt is as long as the sample length {spec.length}; use shorter prompts or longer samples.")
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    per_prompt = np.bincount(np.arange(spec.nsamples) % len(prompts), minlength=len(prompts))
    sequences, provenance = [], []
    with context.model.lock, torch.inference_mode():
        for number, (start, count) in enumerate(zip(starts, per_prompt)):
            for offset in range(0, int(count), spec.batch_size):
                rows = min(spec.batch_size, int(count) - offset)
                for sequence in _generate(context.model, start, rows, spec, generator, context.eos_id):
                    sequences.append(sequence)
                    provenance.append(Provenance(row_id=-1, source=f"{SOURCE}:prompt {number}", token_offset=0,
                                                 document_tokens=len(sequence)))
    shown = "BOS" if not spec.prompts else f"{len(prompts)} prompts"
    notes = [(f"{len(sequences)} sequences sampled from the model from {shown}, temperature {spec.temperature_start:g} → "
              f"{spec.temperature_end:g}, top-{spec.top_k}.")]
    return Draft(sequences, provenance, notes)
