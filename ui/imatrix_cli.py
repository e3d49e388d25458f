"""``calibscope imatrix``: collect (llama-imatrix's flags), show and compare importance matrices."""
from __future__ import annotations

import argparse
import sys

SHOWN_ROWS = 12


def add_commands(commands) -> None:
    parser = commands.add_parser("imatrix", help="llama.cpp importance matrices: collect, show, compare")
    sub = parser.add_subparsers(dest="imatrix_command", metavar="ACTION", required=True)
    collect = sub.add_parser("collect", help="llama-imatrix's statistics from a text file, chunked as llama-imatrix chunks it")
    collect.add_argument("-m", "--model", default="builtin:gemma-3-270m", help="model name, hub id or folder")
    collect.add_argument("-f", "--file", required=True, help="the calibration text file")
    collect.add_argument("-c", "--ctx-size", type=int, default=512, help="chunk size in tokens (llama-imatrix -c)")
    collect.add_argument("--chunks", type=int, default=-1, help="chunks to process (-1: all)")
    collect.add_argument("-o", "--output", required=True, help="output file: .gguf, or .dat for the legacy format")
    collect.add_argument("--process-output", action="store_true", help="also the output tensor")
    collect.add_argument("--device", default="auto")
    collect.add_argument("--dtype", default="float32",
                         help="float32 (default) computes activations as llama-imatrix does; bfloat16/auto is faster "
                              "on some CPUs and GPUs and differs from llama-imatrix by up to a few percent per channel")
    collect.add_argument("-b", "--batch-size", type=int, default=8, help="chunks per forward")
    show = sub.add_parser("show", help="what an imatrix file holds: per tensor, the channels that stand out")
    show.add_argument("file")
    show.add_argument("--chunk-size", type=int, default=512, help="for a legacy .dat file")
    compare = sub.add_parser("compare", help="two imatrix files, tensor by tensor")
    compare.add_argument("first")
    compare.add_argument("second")
    compare.add_argument("--chunk-size", type=int, default=512, help="for legacy .dat files")


def run(args: argparse.Namespace) -> int:
    """0 on success; 2 with a one-line message on bad input."""
    from engine.errors import CalibscopeError

    try:
        {"collect": collect, "show": show, "compare": compare}[args.imatrix_command](args)
    except CalibscopeError as error:
        print(f"calibscope: {error}", file=sys.stderr)
        return 2
    return 0


def collect(args: argparse.Namespace) -> None:
    from pathlib import Path

    from engine import ModelSpec, load_model
    from engine.errors import CalibscopeError
    from engine.imatrix import ImatrixSpec, collect_imatrix, llama_text_set, precision_note, write_imatrix

    output = Path(args.output)
    if output.exists():
        raise CalibscopeError(f"'{output}' already exists; choose another output file (nothing was overwritten).")
    loaded = load_model(ModelSpec(args.model, device=args.device, dtype=args.dtype))
    chunks = args.chunks if args.chunks > 0 else 1_000_000
    calibration = llama_text_set(loaded.tokenizer, args.file, args.ctx_size, chunks, loaded.info.max_positions)
    print(calibration.notes[0], file=sys.stderr)
    if precision_note(loaded.info.dtype):
        print(precision_note(loaded.info.dtype), file=sys.stderr)
    imatrix = collect_imatrix(loaded, calibration, ImatrixSpec(include_output=args.process_output, batch_size=args.batch_size))
    imatrix.datasets = [args.file]  # as llama-imatrix records it
    write_imatrix(imatrix, output)
    print(f"{len(imatrix)} tensors over {imatrix.tokens:,} tokens ({imatrix.chunk_count} chunks of {imatrix.chunk_size}) "
          f"-> {output}")


def show(args: argparse.Namespace) -> None:
    from engine.figures import concentration
    from engine.imatrix import read_imatrix

    imatrix = read_imatrix(args.file, args.chunk_size)
    table = concentration(imatrix)
    print(f"{args.file}: {len(imatrix)} tensors, {imatrix.chunk_count} chunks of {imatrix.chunk_size or '?'} tokens, "
          f"datasets {imatrix.datasets}")
    columns = ["tensor", "channels", "experts", "tokens", "top_channel", "max_over_median", "unused_experts"]
    print(table.sort_values("max_over_median", ascending=False)[columns].head(SHOWN_ROWS).to_string(index=False))
    for name, experts in imatrix.unused_experts().items():
        print(f"{name}: experts without a token: {experts}")


def compare(args: argparse.Namespace) -> None:
    from engine.errors import CalibscopeError
    from engine.imatrix import compare_imatrices, read_imatrix

    table = compare_imatrices(read_imatrix(args.first, args.chunk_size), read_imatrix(args.second, args.chunk_size))
    if not len(table):
        raise CalibscopeError("The two files have no tensor in common.")
    comparable = table[table["comparable"]]
    print(f"{len(table)} tensors in common ({len(table.attrs['only_a'])} only in the first, {len(table.attrs['only_b'])} "
          f"only in the second); counts equal: {bool(table['counts_equal'].all())}")
    print(f"p99 relative difference of mean x² per tensor: median {comparable['p99_relative_difference'].median():.4%}, "
          f"worst {comparable['p99_relative_difference'].max():.4%}; Spearman >= {comparable['spearman'].min():.4f}")
    columns = ["tensor", "p50_relative_difference", "p99_relative_difference", "spearman", "top1pct_overlap", "mean_ratio"]
    print(comparable.sort_values("p99_relative_difference", ascending=False)[columns].head(SHOWN_ROWS).to_string(index=False))
