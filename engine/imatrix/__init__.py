"""Importance matrices (llama.cpp's imatrix): collected from a calibration set, read and written in
llama.cpp's GGUF and legacy formats, and compared; llama.cpp's own tools run on them (``llamacpp``)."""
from engine.imatrix.collect import ImatrixSpec, collect_imatrix, named_layers, precision_note
from engine.imatrix.compare import compare_imatrices
from engine.imatrix.files import read_imatrix, write_imatrix
from engine.imatrix.llamacpp import CONTEXT as LLAMA_CONTEXT
from engine.imatrix.llamacpp import HOW_TO_GET as LLAMA_CPP_HOW_TO_GET
from engine.imatrix.llamacpp import SDIST as LLAMA_CPP_SDIST
from engine.imatrix.llamacpp import TOOLS as LLAMA_CPP_TOOLS
from engine.imatrix.llamacpp import TYPES as GGUF_TYPES
from engine.imatrix.llamacpp import GgufResult, imatrix_gguf, run_tool, tools_folder, write_held_out
from engine.imatrix.llamacpp import bin_dir as llama_cpp_bin_dir
from engine.imatrix.llamacpp import float_gguf as llama_float_gguf
from engine.imatrix.llamacpp import gguf_weights as llama_gguf_weights
from engine.imatrix.llamacpp import perplexity as llama_perplexity
from engine.imatrix.llamacpp import quantize as llama_quantize
from engine.imatrix.llamacpp import root as llama_cpp_root
from engine.imatrix.matrix import Imatrix, ImatrixEntry, tensor_order
from engine.imatrix.text import llama_file_text, llama_text_set

__all__ = ["GGUF_TYPES", "LLAMA_CONTEXT", "LLAMA_CPP_HOW_TO_GET", "LLAMA_CPP_SDIST", "LLAMA_CPP_TOOLS", "GgufResult", "Imatrix",
           "ImatrixEntry", "ImatrixSpec", "collect_imatrix", "compare_imatrices", "imatrix_gguf", "llama_cpp_bin_dir",
           "llama_cpp_root", "llama_file_text", "llama_float_gguf", "llama_gguf_weights", "llama_perplexity", "llama_quantize",
           "llama_text_set", "named_layers", "precision_note", "read_imatrix", "run_tool", "tensor_order", "tools_folder",
           "write_held_out", "write_imatrix"]
