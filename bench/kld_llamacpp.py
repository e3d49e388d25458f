"""calibscope's divergence from float (engine.quant.divergence) checked against llama.cpp's own
``llama-perplexity --kl-divergence`` on the builtin Gemma 3 270M: the same text, the same token
ids, the same quantized weights, the same scored positions.

What it uses and builds: llama.cpp's llama-quantize and llama-perplexity, built once into the cache
from the llama-cpp-python sdist (bench/_llamacpp.py); nothing in any Python environment. Files go
to the cache's bench/kld_llamacpp folder; the float log-probabilities llama.cpp saves (2 bytes per
vocabulary entry per scored token: 2.1 GB for 16 chunks) are deleted at the end.

1. The builtin model's packaged GGUF dequantized by llama-quantize to an F32 GGUF (the weights
   calibscope loads: read back through transformers' GGUF reader they equal them exactly, checked).
2. Text: the held-out part of wikitext-2 test (../shared/data), its last 20% of lines, as
   bench/imatrix_llamacpp.py splits it.
3. llama-perplexity -m F32 -f TEXT -c 512 --chunks N --kl-divergence-base BASE: the float model's
   log-probabilities over each chunk's second half. The token ids it saves in BASE (each chunk's
   first replaced by BOS) are compared with calibscope's llama-chunks of the same file, and those
   ids are calibscope's evaluation windows.
4. Per type (Q4_0, Q8_0 by default): llama-quantize F32 -> TYPE, and that file back to F32
   (llama-quantize --allow-requantize: the TYPE's weights dequantized by llama.cpp itself);
   llama-perplexity --kl-divergence-base BASE --kl-divergence on both. calibscope reads the TYPE's
   GGUF into a second copy of the model (engine.imatrix: llama_gguf_weights; the dequantized F32
   file reads back to the very same numbers, checked) and runs ``divergence(copy, windows,
   float_reference(model, windows))``, summarized over the positions
   llama.cpp scores (``from_position(n_ctx / 2)``: 255 per chunk of 512).
   Every llama-perplexity run keeps the KV cache in f32 and flash attention off (its default f16
   cache would round both models' keys and values); weights are not repacked (bench/_llamacpp.py:
   the AMX kernels crash this build; repacking changes the layout, not the arithmetic).

What is judged, and why the tolerance is what it is. The check is calibscope against llama.cpp
running the same dequantized weights in float32 (the TYPE's weights as F32): one model, two
implementations. What separates them:
- the float arithmetic (llama.cpp's float32 graph against torch's: other reduction orders, its own
  exp), and llama.cpp's storage of the float log-probabilities in 16 bits (steps of at most
  16 / 65535 nats; words at log p <= -16 left out of the sum), which makes its per-token KL an
  estimate that can go below zero. The "float floor" (KL(llama.cpp's float ‖ calibscope's float)
  per token, from the saved log-probabilities, with llama.cpp's formula) measures both: in the
  --quick run -1.8e-5 nats a token on average, at most 7.4e-5 in size, the same top token everywhere.
Tolerance, from that floor: mean, median and p99 KLD within 5% or within 5e-5 nats (the floor; it
matters only for Q8_0, whose mean KLD is ~7e-4), the same-top-token rate within 1 percentage point
(a top token flips only at near ties), and the perplexity over the scored positions within 0.5%.

Not judged, printed beside it: llama.cpp's own quantized kernels (what a llama.cpp user measures).
They multiply Q4_0 and Q8_0 weights with activations rounded to Q8_0 (8 bits per block of 32, an
fp16 scale), while calibscope (like the dequantized F32 file) keeps float32 activations: weight-only
quantization. At Q4_0 that rounding is small beside the weights' (the --quick run: calibscope's mean
KLD 0.7% below llama.cpp's); at Q8_0 it is as fine as the weights' own and adds about as much
divergence (calibscope 0.0007 against 0.0024 nats). To show that this is the gap, the bench also
runs calibscope with every Linear's input rounded to Q8_0 as ggml's quantize_row_q8_0 rounds it
(``--no-activation-check`` skips it): it lands near llama.cpp's kernels, not on them, since once a
rounding falls differently (the float activations differ in the last bits) the two rounding noises
part ways layer by layer.

Prints the table and ``{"bench": "kld_llamacpp", "metric": "worst_mean_kld_relative_difference", ...}``.
Usage: python bench/kld_llamacpp.py [--quick] [--chunks 16] [--types Q4_0,Q8_0]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import collections
import contextlib
import math
import re
import time
from pathlib import Path

import gguf
import numpy as np
import torch

from bench._common import report
from bench._llamacpp import build as build_llama_cpp
from bench.imatrix_llamacpp import split_text
from engine import ModelSpec, load_model
from engine.imatrix import LLAMA_CPP_SDIST, llama_float_gguf, llama_gguf_weights, llama_quantize, llama_text_set, run_tool
from engine.models import cache_root
from engine.quant import EvaluationSet, divergence, float_reference, output_logits

N_CTX = 512
FIRST = N_CTX // 2  # llama-perplexity scores positions n_ctx/2 .. n_ctx-2 of each chunk (255 tokens)
SCORED = N_CTX - 1 - FIRST
THREADS = ["-t", "2"]
EXACT = ["-ctk", "f32", "-ctv", "f32", "-fa", "off", "--no-repack"]
TOLERANCE = {"kld_relative": 0.05, "kld_absolute": 5e-5, "top1_points": 1.0, "perplexity_relative": 0.005}


def read_base_header(path: Path) -> tuple[int, int, int, np.ndarray]:
    """(n_ctx, n_vocab, chunks, token ids [chunks, n_ctx]) of llama-perplexity's --kl-divergence-base file."""
    with path.open("rb") as handle:
        if handle.read(8) != b"_logits_":
            raise ValueError(f"{path.name} is not a llama-perplexity logits file")
        n_ctx, n_vocab, chunks = np.frombuffer(handle.read(12), dtype=np.int32)
        tokens = np.frombuffer(handle.read(4 * n_ctx * chunks), dtype=np.int32).reshape(chunks, n_ctx)
    return int(n_ctx), int(n_vocab), int(chunks), tokens


def base_log_probs(path: Path, n_vocab: int, chunks: int, n_ctx: int):
    """Per chunk, llama.cpp's saved float log-probabilities [scored, n_vocab] (float32, as it decodes them:
    scale * q + min; entries at or below -16 are the ones it leaves out of the sum)."""
    nv = 2 * ((n_vocab + 1) // 2) + 4
    offset = 8 + 12 + 4 * n_ctx * chunks
    stored = np.memmap(path, dtype=np.uint16, mode="r", offset=offset, shape=(chunks, n_ctx - 1 - n_ctx // 2, nv))
    for chunk in range(chunks):
        block = np.asarray(stored[chunk])
        scale_min = block[:, :4].copy().view(np.float32)  # [scored, 2]: scale, min log-prob
        yield torch.from_numpy(block[:, 4:4 + n_vocab].astype(np.float32) * scale_min[:, :1] + scale_min[:, 1:2])


def float_floor(base: Path, loaded, reference, n_vocab: int, chunks: int) -> dict:
    """KL(llama.cpp's float ‖ calibscope's float) per scored token, as llama.cpp sums it, and the two
    float models' same-top-token rate: how far apart the two implementations are with no quantization."""
    klds, same = [], []
    with torch.inference_mode():
        for chunk, log_p in enumerate(base_log_probs(base, n_vocab, chunks, N_CTX)):
            logits = output_logits(loaded.model, reference.states[chunk, FIRST:].float())
            log_q = torch.log_softmax(logits, -1)
            kept = log_p > -16
            klds.append(torch.where(kept, log_p.exp() * (log_p - log_q), 0).sum(-1))
            same.append(log_p.argmax(-1) == log_q.argmax(-1))
    kld = torch.cat(klds).double()
    return {"mean_kld": float(kld.mean()), "p99_kld": float(torch.quantile(kld, 0.99)),
            "max_abs_kld": float(kld.abs().max()), "top1_agreement": float(torch.cat(same).double().mean())}


def llama_float_run(model: Path, text: Path, chunks: int, base: Path) -> tuple[float, float]:
    """llama-perplexity on the float GGUF, saving its log-probabilities: (its perplexity, seconds)."""
    started = time.perf_counter()
    output = run_tool("llama-perplexity", "-m", str(model), "-f", str(text), "-c", str(N_CTX), "--chunks", str(chunks),
                      "--kl-divergence-base", str(base), *EXACT, *THREADS)
    return float(re.search(r"Final estimate: PPL = ([0-9.]+)", output).group(1)), time.perf_counter() - started


LLAMA_KLD = {"perplexity": r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", "float_perplexity": r"Mean PPL\(base\)\s*:\s*([0-9.]+)",
             "mean_kld": r"Mean\s+KLD:\s*(-?[0-9.]+)", "median_kld": r"Median\s+KLD:\s*(-?[0-9.]+)",
             "p99_kld": r"99\.0%\s+KLD:\s*(-?[0-9.]+)", "top1_agreement": r"Same top p:\s*([0-9.]+)"}


def llama_kld_run(model: Path, base: Path) -> dict:
    """llama-perplexity --kl-divergence of ``model`` against the saved float log-probabilities."""
    started = time.perf_counter()
    output = run_tool("llama-perplexity", "-m", str(model), "-c", str(N_CTX), "--kl-divergence-base", str(base),
                      "--kl-divergence", *EXACT, *THREADS)
    found = {key: float(re.search(pattern, output).group(1)) for key, pattern in LLAMA_KLD.items()}
    found["top1_agreement"] /= 100  # printed in percent
    found["seconds"] = round(time.perf_counter() - started, 1)
    return found


# llama.cpp's CPU dot products take these weight types with activations rounded to Q8_0 (vec_dot_type)
Q8_0_ACTIVATIONS = {"Q4_0", "Q5_0", "Q8_0"}


def q8_0_round_trip(x: torch.Tensor) -> torch.Tensor:
    """x as ggml's quantize_row_q8_0 leaves it for a Q4_0 / Q8_0 dot product: blocks of 32 along the last
    dimension, d = absmax / 127 stored in fp16, q = round(x / d) (with 1 / d of the unrounded d)."""
    blocks = x.float().reshape(*x.shape[:-1], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    inverse = torch.where(d > 0, 1 / d, 0)
    q = torch.round(blocks * inverse)  # half to even, as the AVX2 kernel's _mm256_round_ps (the C reference: roundf)
    return (q * d.half().float()).reshape(x.shape).to(x.dtype)


@contextlib.contextmanager
def q8_0_inputs(model: torch.nn.Module):
    """Every Linear (the output head too: the tied embedding) sees its input rounded to Q8_0, as llama.cpp's
    CPU kernels multiply a GGUF whose every matrix is one of Q8_0_ACTIVATIONS's types."""
    hooks = [module.register_forward_pre_hook(lambda _, args: (q8_0_round_trip(args[0]), *args[1:]))
             for module in model.modules() if isinstance(module, torch.nn.Linear)]
    try:
        yield len(hooks)
    finally:
        for hook in hooks:
            hook.remove()


def summary(found) -> dict:
    return {"perplexity": found.perplexity, "mean_kld": found.mean_kld, "median_kld": found.median_kld,
            "p99_kld": found.p99_kld, "top1_agreement": found.top1_agreement}


def agreement(mine: dict, theirs: dict, judged: bool = False) -> dict:
    """Relative differences (KLD, perplexity) and the same-top difference in points; with ``judged``,
    whether they are within TOLERANCE (a KLD within the relative or the absolute bound)."""
    rel = {key: mine[key] / theirs[key] - 1 for key in ("mean_kld", "median_kld", "p99_kld", "perplexity")}
    points = 100 * (mine["top1_agreement"] - theirs["top1_agreement"])
    found = {**{f"{key}_relative": round(value, 5) for key, value in rel.items()}, "top1_points": round(points, 3)}
    if judged:
        kld = all(abs(rel[key]) <= TOLERANCE["kld_relative"] or abs(mine[key] - theirs[key]) <= TOLERANCE["kld_absolute"]
                  for key in ("mean_kld", "median_kld", "p99_kld"))
        found["within"] = bool(kld and abs(points) <= TOLERANCE["top1_points"]
                               and abs(rel["perplexity"]) <= TOLERANCE["perplexity_relative"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 chunks of 512: a smoke run")
    parser.add_argument("--chunks", type=int, default=16, help="chunks of 512 tokens of the held-out text")
    parser.add_argument("--types", default="Q4_0,Q8_0", help="llama-quantize types, comma-separated")
    parser.add_argument("--no-activation-check", action="store_true", help="skip calibscope with Q8_0 activations")
    args = parser.parse_args()
    chunks, types = 2 if args.quick else args.chunks, args.types.split(",")
    started = time.perf_counter()

    build_llama_cpp()
    work = cache_root() / "bench" / "kld_llamacpp"
    work.mkdir(parents=True, exist_ok=True)
    _, held_out = split_text(work)
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype="float32"))  # llama.cpp computes in float32
    f32_cached = any(path.name.endswith("-f32.gguf") for path in (cache_root() / "llama.cpp").glob("*/models/*"))
    model = llama_float_gguf(loaded)
    weights_identical = all(torch.equal(value, dict(loaded.model.named_parameters())[name])
                            for name, value in llama_gguf_weights(model, loaded.model).items())
    print(f"F32 GGUF read back == calibscope's float weights: {weights_identical}")

    base = work / f"float-c{N_CTX}-{chunks}.kld"
    llama_float_ppl, llama_float_s = llama_float_run(model, held_out, chunks, base)
    n_ctx, n_vocab, saved_chunks, tokens = read_base_header(base)
    assert (n_ctx, saved_chunks) == (N_CTX, chunks), (n_ctx, saved_chunks)
    llama_windows = tokens.copy()
    llama_windows[:, 0] = loaded.tokenizer.bos_token_id  # llama-perplexity replaces each chunk's first token
    own = llama_text_set(loaded.tokenizer, held_out, N_CTX, chunks)
    windows = torch.stack([torch.as_tensor(sequence) for sequence in own.sequences])
    tokens_identical = windows.shape == llama_windows.shape and bool((windows.numpy() == llama_windows).all())
    print(f"token ids identical to llama-perplexity's chunks: {tokens_identical}; first ids "
          f"{windows[0, :8].tolist()} vs {llama_windows[0, :8].tolist()}")
    evaluation = EvaluationSet(torch.as_tensor(llama_windows, dtype=torch.int64), f"wikitext-2 held-out, {chunks} x {N_CTX}")

    seconds = {"llama-perplexity float (saves log-probs)": round(llama_float_s, 1)}
    clock = time.perf_counter()
    reference = float_reference(loaded, evaluation)
    seconds["calibscope float reference"] = round(time.perf_counter() - clock, 1)
    float_ppl = math.exp(float(reference.nll[:, FIRST:].mean()))
    floor = float_floor(base, loaded, reference, n_vocab, chunks)
    print(f"float: llama.cpp PPL {llama_float_ppl:.4f}, calibscope {float_ppl:.4f} (scored half); float floor {floor}")

    copy = load_model(ModelSpec("builtin:gemma-3-270m", dtype="float32"))
    params = dict(copy.model.named_parameters())
    rows, results = [], {}
    for kind in types:
        target = llama_quantize(model, work / f"gemma-3-270m-{kind}.gguf", kind)
        tensor_types = dict(collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(str(target)).tensors))
        dense = work / f"gemma-3-270m-{kind}-as-f32.gguf"  # the same weights, dequantized by llama.cpp itself
        run_tool("llama-quantize", "--allow-requantize", str(target), str(dense), "F32", "2")
        theirs = {"dequantized": llama_kld_run(dense, base), "native": llama_kld_run(target, base)}
        for name, found in theirs.items():
            seconds[f"llama-perplexity {kind} {name} --kl-divergence"] = found.pop("seconds")
        quantized = llama_gguf_weights(target, copy.model)
        same_weights = all(torch.equal(value, quantized[name]) for name, value in llama_gguf_weights(dense, copy.model).items())
        with copy.lock, torch.no_grad():
            changed = {name for name, value in quantized.items() if not torch.equal(value, params[name])}
            for name, value in quantized.items():
                params[name].copy_(value)
        clock = time.perf_counter()
        found = divergence(copy, evaluation, reference)
        seconds[f"calibscope {kind} divergence"] = round(time.perf_counter() - clock, 1)
        mine = summary(found.from_position(FIRST))
        result = {"gguf_tensor_types": tensor_types, "weights_changed": len(changed),
                  "dequantized_weights_identical": same_weights, "llama_cpp_dequantized": theirs["dequantized"],
                  "calibscope": mine,
                  "check": agreement(mine, theirs["dequantized"], judged=True), "llama_cpp_native": theirs["native"],
                  "calibscope_vs_native": agreement(mine, theirs["native"])}
        rows += [{"type": kind, "measure": "llama.cpp, dequantized to F32", **theirs["dequantized"]},
                 {"type": kind, "measure": "calibscope", **mine},
                 {"type": kind, "measure": "llama.cpp, its quantized kernels", **theirs["native"]}]
        if not args.no_activation_check and set(tensor_types) <= Q8_0_ACTIVATIONS | {"F32"}:
            with q8_0_inputs(copy.model) as hooked:
                clock = time.perf_counter()
                found = divergence(copy, evaluation, reference)
                seconds[f"calibscope {kind} divergence, Q8_0 activations"] = round(time.perf_counter() - clock, 1)
            rounded = summary(found.from_position(FIRST))
            result.update(calibscope_q8_0_activations=rounded, q8_0_layers=hooked,
                          q8_0_activations_vs_native=agreement(rounded, theirs["native"]))
            rows.append({"type": kind, "measure": "calibscope, Q8_0 activations", **rounded})
        results[kind] = result
        target.unlink()
        dense.unlink()
        print(f"{kind}: {result}", flush=True)
    base.unlink()

    import pandas as pd

    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    worst = max(abs(result["check"]["mean_kld_relative"]) for result in results.values())
    met = bool(tokens_identical and weights_identical
               and all(result["dequantized_weights_identical"] and result["check"]["within"] for result in results.values()))
    reused = {"F32 GGUF": "converted by an earlier run (no number depends on when)"} if f32_cached else {}
    report("kld_llamacpp", "worst_mean_kld_relative_difference", round(worst, 5),
           f"calibscope vs llama-perplexity --kl-divergence of the same weights (dequantized to F32) on the same ids and "
           f"positions: mean, median and p99 KLD within {TOLERANCE['kld_relative']:.0%} or {TOLERANCE['kld_absolute']:g} nats, "
           f"same top within {TOLERANCE['top1_points']} point, perplexity within {TOLERANCE['perplexity_relative']:.1%}",
           met, dtype=loaded.info.dtype, device=loaded.info.device, reused=reused, quick=args.quick,
           chunks=chunks, n_ctx=N_CTX, scored_tokens=chunks * SCORED, tokens_identical=tokens_identical,
           first_ids=windows[0, :8].tolist(), weights_identical=weights_identical,
           float={"llama_cpp_perplexity": llama_float_ppl, "calibscope_perplexity": float_ppl, "floor": floor},
           results=results, tolerance=TOLERANCE, seconds=seconds, total_seconds=round(time.perf_counter() - started, 1),
           llama_cpp=LLAMA_CPP_SDIST, llama_flags=" ".join(EXACT + THREADS))

if __name__ == "__main__":
    main()
