"""bench/peers.py --part rotations: llm-compressor 0.14's QuIPModifier (a random-Hadamard input
rotation of every Linear but the LM head, its default) and SpinQuantModifier (R1 and R2) before its
W4A4, NVFP4, MXFP4 and W4A16 presets (``bench/peer_scripts/llmcompressor_rotations.py``), against
calibscope's presets of the same numerics ("W4A4 int (A4 per token)", "NVFP4 W4A4", "MXFP4 W4A4" and
"W4 g128 RTN": the peer's QuantizationModifier rounds to nearest) unrotated, rotated on every layer
and where it helps, on the same windows. The int presets take a group of 128 columns where every
width allows it and the largest power of two that divides them where not (SmolLM2: 64, on both sides).
The peer's checkpoints are read back here (their dequantized weights, input global scales and the
rotation matrices stored as ``{layer}.v_input.weight``) and every result is evaluated by the same
divergence routine (mean KL divergence from float, perplexity) on the same held-out windows. Goal:
calibscope's best choice per scheme at or below both its unrotated scheme and llm-compressor's QuIP;
``{"bench": "peers_rotations", ...}``."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

from bench._common import report
from engine.export import changed_floats, dequantized_layers, input_quantizers, stored_rotations
from engine.quant import (
    PRESETS,
    Calibrated,
    NumberFormat,
    Quantization,
    QuantizedModel,
    RotationSpec,
    divergence,
    float_reference,
    quantizable_layers,
    quantize,
    quantized,
)
from engine.stats import StatsSpec, collect

SCHEMES = {"W4A4": "W4A4 int (A4 per token)", "NVFP4": "NVFP4 W4A4", "MXFP4": "MXFP4 W4A4",  # llm-compressor preset
           "W4A16": "W4 g128 RTN"}  # -> calibscope's
ROTATIONS = {"none": None, "every layer": RotationSpec(), "where it helps": RotationSpec(placement="where it helps")}


def measured(loaded, plan: QuantizedModel, evaluation, reference) -> dict:
    with quantized(loaded, plan):
        found = divergence(loaded, evaluation, reference)
    return {"kld": round(found.mean_kld, 5), "perplexity": round(found.perplexity, 3), "top1": round(found.top1_agreement, 4)}


def peer_plan(folder: Path, loaded) -> QuantizedModel:
    """The peer's checkpoint as a plan: its dequantized (rotated) weights, input quantizers, stored
    rotations and the float tensors it changed (SpinQuant's rotated embedding, head and fused norms)."""
    weights = dict(dequantized_layers(folder))
    stored = stored_rotations(folder)
    # QuIP shares one matrix per width across layers, which save_pretrained may write once (tied):
    # every quantized layer takes the stored matrix of its input width
    by_width = {rotation.order: rotation for rotation in stored.values()}
    rotations = {name: stored.get(name, by_width.get(weight.shape[-1])) for name, weight in weights.items()}
    return QuantizedModel(weights=weights, inputs=input_quantizers(folder), floats=changed_floats(folder, loaded),
                          rotations={name: rotation for name, rotation in rotations.items() if rotation is not None})


def int_group(loaded) -> int:
    """The int presets' group size: 128, or the largest power of two that divides every quantized
    layer's input where 128 does not (SmolLM2's 576 = 4.5 x 128: compressed-tensors refuses a group
    that does not divide the columns)."""
    widths = {layer.in_features for layer in quantizable_layers(loaded.model, PRESETS["W4 g128 RTN"])}
    return next(group for group in (128, 64, 32, 16) if all(width % group == 0 for width in widths))


def rotations_part(loaded, checkpoint: Path, calibration, evaluation, work: Path, environment, exported_windows,
                   here: Path, suffix: str = "") -> None:
    jsonl = exported_windows(calibration, loaded.tokenizer, "jsonl", work)
    stats = collect(loaded, calibration, StatsSpec())
    reference = float_reference(loaded, evaluation)
    rows, verdict, group = [], {}, int_group(loaded)
    for peer_scheme, scheme in SCHEMES.items():
        found, preset = {}, PRESETS[scheme]
        if preset.weights.format is NumberFormat.INT and group != preset.weights.group_size:
            preset = dataclasses.replace(preset, weights=dataclasses.replace(preset.weights, group_size=group))
        for label, rotation in ROTATIONS.items():
            spec = dataclasses.replace(preset, rotation=rotation)
            plan, _ = quantize(loaded, Quantization(spec, sensitivity="none"), Calibrated(calibration, stats=stats))
            found[label] = measured(loaded, plan, evaluation, reference)
            rows.append({"tool": "calibscope", "scheme": scheme, "rotation": label, "rotated_layers": len(plan.rotations),
                         **found[label]})
            print(rows[-1], flush=True)
        for peer_rotation in ("quip", "spinquant"):
            folder = work / f"llmcompressor-{peer_rotation}-{peer_scheme}"
            shutil.rmtree(folder, ignore_errors=True)
            subprocess.run([str(environment("llmcompressor")), str(here / "peer_scripts" / "llmcompressor_rotations.py"),
                            str(checkpoint), str(jsonl), str(folder), peer_rotation, peer_scheme, str(group)],
                           check=True, cwd=work)
            error = folder / "error.txt"
            row = {"tool": "llmcompressor", "scheme": peer_scheme, "rotation": peer_rotation}
            if error.exists():
                row["error"] = error.read_text().splitlines()[0]
            else:
                plan = peer_plan(folder, loaded)
                row.update(rotated_layers=len(plan.rotations), stored_matrices=len(stored_rotations(folder)),
                           **measured(loaded, plan, evaluation, reference))
                found[f"llm-compressor {peer_rotation}"] = row
            rows.append(row)
            print(row, flush=True)
        best = min(("none", "every layer", "where it helps"), key=lambda label: found[label]["kld"])
        quip = found.get("llm-compressor quip", {}).get("kld", float("inf"))
        verdict[scheme] = {"best": best, "best_kld": found[best]["kld"], "unrotated_kld": found["none"]["kld"],
                           "quip_kld": quip, "met": found[best]["kld"] <= min(found["none"]["kld"], quip)}
    report(f"peers_rotations{suffix}", "schemes where calibscope's best rotation choice is at or below both its unrotated "
           "scheme and llm-compressor's QuIP (mean KLD)", sum(v["met"] for v in verdict.values()), f"all {len(verdict)}",
           all(v["met"] for v in verdict.values()), dtype=loaded.info.dtype, device=loaded.info.device,
           reused={"peer environments": "made once under the cache (no timing depends on them)"},
           verdict=verdict, rows=rows, int_group_size=group, calibration="32 x 512 gptq-windows, wikitext-2 test first 80%",
           evaluation="16 x 512, wikitext-2 test last 20%")
