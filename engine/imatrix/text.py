"""A calibration set made from a text file exactly as ``llama-imatrix -f FILE -c N_CTX`` reads it."""
from __future__ import annotations

from pathlib import Path

from engine.corpus import read_text_file
from engine.sampling import CalibrationSet, LlamaChunksSpec, build, rows_dataset

MAX_TEXT_BYTES = 512 * 2**20


def llama_file_text(path: str | Path) -> str:
    """The file's text as llama.cpp's ``-f`` keeps it: unchanged but for one trailing newline
    (calibscope's text corpora strip and split; llama.cpp does not, and one token shifts every chunk)."""
    text = read_text_file(Path(path), MAX_TEXT_BYTES)
    return text.removesuffix("\n")


def llama_text_set(tokenizer, path: str | Path, n_ctx: int = 512, chunks: int = 10_000,
                   max_positions: int | None = None) -> CalibrationSet:
    """The first ``chunks`` chunks of ``n_ctx`` tokens llama-imatrix would evaluate on ``path``."""
    path = Path(path)
    return build(rows_dataset([llama_file_text(path)], path.name), tokenizer, LlamaChunksSpec(nsamples=chunks, length=n_ctx),
                 max_positions=max_positions, corpus_label=path.name)
