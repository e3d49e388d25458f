"""Importance matrices (llama.cpp's imatrix): collected from a calibration set, read and written in
llama.cpp's GGUF and legacy formats, and compared."""
from engine.imatrix.collect import ImatrixSpec, collect_imatrix, named_layers, precision_note
from engine.imatrix.files import read_imatrix, write_imatrix
from engine.imatrix.matrix import Imatrix, ImatrixEntry
from engine.imatrix.text import llama_text_set

__all__ = ["Imatrix", "ImatrixEntry", "ImatrixSpec", "collect_imatrix", "llama_text_set", "named_layers", "precision_note",
           "read_imatrix", "write_imatrix"]
