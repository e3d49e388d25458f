"""From a session's importance matrix to a quantized GGUF, with llama.cpp's own tools:
``llama-quantize --imatrix`` makes it and ``llama-perplexity`` measures it (against the same type
quantized without the matrix), so the matrix calibscope collected is judged by the tool that uses it.

The tools are found in ``LLAMA_CPP_BIN``, in calibscope's cache (``python -m bench._llamacpp``
builds them there from the llama-cpp-python sdist, which vendors llama.cpp), or on the PATH. The
model goes to llama-quantize as a float GGUF: a builtin model's packaged GGUF dequantized by
llama-quantize itself (the weights calibscope loads), any other model converted from its
safetensors with llama.cpp's ``convert_hf_to_gguf.py``; both are cached.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import guard
from engine.errors import CalibscopeError
from engine.imatrix.files import write_imatrix
from engine.imatrix.matrix import Imatrix
from engine.models import cache_root

SDIST = "llama-cpp-python==0.3.36"  # vendors llama.cpp commit 0c1e570
TOOLS = ("llama-imatrix", "llama-quantize", "llama-perplexity", "llama-tokenize")
NEEDED = ("llama-quantize", "llama-perplexity")
HOW_TO_GET = ("llama.cpp's tools are not installed here: `python -m bench._llamacpp` builds llama-quantize and "
              "llama-perplexity into calibscope's cache (about 10 minutes on 2 cores, once; needs cmake and a C++ "
              "compiler), or set LLAMA_CPP_BIN to a folder holding your own build.")
# the types llama-quantize makes that weigh columns by an importance matrix (IQ types need one)
TYPES = ("Q4_K_M", "Q3_K_S", "Q2_K", "IQ4_XS", "IQ3_XXS", "IQ2_XS")
CONTEXT = 512  # llama-perplexity's chunk, as llama.cpp reports perplexities


def root() -> Path:
    return cache_root() / "llama.cpp" / SDIST.split("==")[1]


def bin_dir() -> Path:
    configured = os.environ.get("LLAMA_CPP_BIN")
    return Path(configured).expanduser() if configured else root() / "build" / "bin"


def tools_folder(needed: tuple[str, ...] = NEEDED) -> Path | None:
    """Where llama.cpp's tools are (None: not here)."""
    if all((bin_dir() / tool).is_file() for tool in needed):
        return bin_dir()
    found = [shutil.which(tool) for tool in needed]
    if all(found) and len({Path(path).parent for path in found}) == 1:
        return Path(found[0]).parent
    return None


def run_tool(tool: str, *args: str) -> str:
    """A tool's combined output; a failure says which tool and shows the end of what it printed."""
    folder = tools_folder()
    if folder is None:
        raise CalibscopeError(HOW_TO_GET)
    done = subprocess.run([str(folder / tool), *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise CalibscopeError(f"{tool} failed (exit {done.returncode}): {(done.stdout + done.stderr)[-600:].strip()}")
    return done.stdout + done.stderr


def complete_gguf(path: Path) -> bool:
    """Whether ``path`` is a whole GGUF file: gguf's reader maps every tensor it lists, so a file cut
    short (a crash while it was written) fails here and is made again instead of trusted."""
    import gguf

    try:
        return path.is_file() and len(gguf.GGUFReader(str(path)).tensors) > 0
    except Exception:  # noqa: BLE001 - any failure to read it means it is not a whole GGUF
        return False


def _cached_gguf(target: Path, size: int, make) -> Path:
    """``target``, made by ``make(temporary path, scratch folder)`` unless a whole GGUF is already
    there: made under a unique temporary name (two visitors making it at once never share a file or a
    scratch folder), checked whole, then renamed into place; a failure leaves nothing behind."""
    if complete_gguf(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with guard.current().reserve_disk(f"The float GGUF of {target.stem}", size), \
            tempfile.TemporaryDirectory(prefix=f".{target.stem}.tmp-", dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        make(partial, Path(scratch))
        if not complete_gguf(partial):
            raise CalibscopeError(f"llama.cpp's tools wrote an incomplete GGUF for {target.stem}; nothing was kept.")
        os.replace(partial, target)
    return target


def gguf_key(name: str, revision: str | None) -> str:
    """A cache name for a model's float GGUF: readable, and unique per model id and revision (a hash
    of both: 'a/b-c' and 'a-b/c' never meet)."""
    digest = hashlib.sha256(f"{name}\n{revision or ''}".encode()).hexdigest()[:16]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '-', name)[:80]}-{digest}"


def float_gguf(loaded, threads: int = 2) -> Path:
    """The loaded model as a float GGUF llama-quantize takes, made once and cached."""
    from engine.models import BUILTIN_MODELS

    name = loaded.info.name
    folder = root() / "models"
    if name in BUILTIN_MODELS:
        def dequantized(partial: Path, scratch: Path) -> None:
            source = BUILTIN_MODELS[name].materialize(scratch)
            run_tool("llama-quantize", "--allow-requantize", str(source), str(partial), "F32", str(threads))

        return _cached_gguf(folder / f"{BUILTIN_MODELS[name].cache_key()}-f32.gguf", loaded.info.parameters * 4, dequantized)
    return _converted(loaded, folder)


def _converted(loaded, folder: Path) -> Path:
    """Any other model through llama.cpp's converter (from the source tree the build unpacked)."""
    script = root() / "src" / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise CalibscopeError(f"Converting {loaded.info.name} to GGUF needs llama.cpp's convert_hf_to_gguf.py, which comes "
                              "with the tools built by `python -m bench._llamacpp`; or convert it yourself and run "
                              "llama-quantize --imatrix with the downloaded matrix.")

    def converted(partial: Path, scratch: Path) -> None:
        hf = scratch / "hf"
        with loaded.lock:
            loaded.model.save_pretrained(hf)
        loaded.tokenizer.save_pretrained(hf)
        done = subprocess.run([sys.executable, str(script), str(hf), "--outfile", str(partial), "--outtype", "f16"],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")})
        if done.returncode:
            raise CalibscopeError(f"llama.cpp's converter cannot convert {loaded.info.name}: {done.stderr[-400:].strip()}")

    # the scratch folder holds the model saved as safetensors too (its float weights) besides the GGUF
    size = loaded.info.parameters * (2 + next(loaded.model.parameters()).element_size())
    return _cached_gguf(folder / f"{gguf_key(loaded.info.name, loaded.spec.revision)}-f16.gguf", size, converted)


def gguf_weights(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a GGUF llama.cpp made (a llama-quantize output, a float GGUF above) by ``model``'s
    parameter names, dequantized by transformers' GGUF reader as a builtin model is loaded (its name
    map, and the architecture's own fixes such as Gemma's norm offsets), in float32: llama.cpp's
    quantized weights to evaluate in calibscope. A tied output (no ``output.weight``) comes back once,
    as the embedding. For files made here, not a visitor's: no reading limits apply."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    known = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(known))
    if unknown:
        raise CalibscopeError(f"{path.name} holds tensors the model has no parameter for: {', '.join(unknown[:5])}.")
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(known[name].shape):
            raise CalibscopeError(f"{path.name}: {name} is {tuple(value.shape)}, the model's {tuple(known[name].shape)}.")
    return {name: torch.as_tensor(value).float() for name, value in tensors.items()}


def quantize(model: Path, target: Path, kind: str, imatrix: Path | None = None, threads: int = 2) -> Path:
    args = ["--imatrix", str(imatrix)] if imatrix is not None else []
    run_tool("llama-quantize", *args, str(model), str(target), kind, str(threads))
    return target


def perplexity(model: Path, text: Path, chunks: int, threads: int = 2) -> float:
    """llama-perplexity's final estimate over ``chunks`` chunks of CONTEXT tokens of ``text``.

    --no-repack: on CPUs with AMX (Sapphire Rapids and later) the repacked weights of a quantized
    GGUF go to llama.cpp's AMX int8 kernels, which crash this build (segmentation fault in
    ggml_backend_amx_mul_mat, Q4_K_M and IQ2_XS alike); repacking only changes the layout the
    kernels read, not what is computed."""
    output = run_tool("llama-perplexity", "-m", str(model), "-f", str(text), "-c", str(CONTEXT), "--chunks", str(chunks),
                      "-t", str(threads), "--no-repack")
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", output)
    if found is None:
        raise CalibscopeError(f"llama-perplexity printed no estimate (is the held-out text at least {CONTEXT * 2} tokens?).")
    return float(found.group(1))


def write_held_out(tokenizer, texts: list[str], chunks: int, target: Path) -> Path:
    """The first documents of ``texts`` that hold ``chunks`` chunks of CONTEXT tokens (a tenth more,
    counted with the model's tokenizer), so llama-perplexity tokenizes what it measures and no more
    (the whole held-out part of a corpus took it 18 s for 2 chunks)."""
    needed, kept, tokens = int(chunks * CONTEXT * 1.1), [], 0
    for text in texts:
        kept.append(text)
        tokens += len(tokenizer(text, add_special_tokens=False).input_ids)
        if tokens >= needed:
            break
    target.write_text("\n\n".join(kept), encoding="utf-8")
    return target


@dataclass
class GgufResult:
    kind: str
    path: Path
    bytes: int
    perplexity: float
    without_imatrix: float | None  # the same type quantized without the matrix (None: the type requires one)
    float_perplexity: float
    seconds: float

    def describe(self) -> str:
        baseline = ("llama-quantize refuses this type without a matrix" if self.without_imatrix is None
                    else f"{self.without_imatrix:.3f} without it")
        return (f"{self.kind} GGUF with this importance matrix: {self.bytes / 2**20:,.1f} MiB, llama-perplexity "
                f"{self.perplexity:.3f} ({baseline}; float {self.float_perplexity:.3f}) in {self.seconds:.0f} s.")


def imatrix_gguf(loaded, imatrix: Imatrix, kind: str, held_out: Path, folder: Path, chunks: int = 8,
                 progress=lambda fraction, message: None) -> GgufResult:
    """``kind`` quantized by llama-quantize with ``imatrix`` into ``folder``, measured by
    llama-perplexity on ``held_out`` (and the float model, and the type without the matrix)."""
    if kind not in TYPES:
        raise CalibscopeError(f"GGUF type {kind!r} is not offered; use one of {', '.join(TYPES)}.")
    started = time.perf_counter()
    progress(0.05, "Float GGUF for llama-quantize")
    source = float_gguf(loaded)
    folder.mkdir(parents=True, exist_ok=True)
    matrix = write_imatrix(imatrix, folder / "imatrix.gguf")
    progress(0.3, f"llama-quantize {kind} --imatrix")
    target = quantize(source, folder / f"{source.stem.removesuffix('-f32').removesuffix('-f16')}-{kind}.gguf", kind, matrix)
    progress(0.45, "llama-perplexity")
    with_matrix = perplexity(target, held_out, chunks)
    progress(0.6, "llama-perplexity of the float model")
    float_ppl = perplexity(source, held_out, chunks)
    baseline = None
    try:
        progress(0.75, f"llama-quantize {kind} without the matrix")
        plain = quantize(source, folder / f"plain-{kind}.gguf", kind)
        baseline = perplexity(plain, held_out, chunks)
        plain.unlink()
    except CalibscopeError as error:
        if not re.search(r"importance matrix", str(error)):
            raise
    return GgufResult(kind, target, target.stat().st_size, with_matrix, baseline, float_ppl, time.perf_counter() - started)
