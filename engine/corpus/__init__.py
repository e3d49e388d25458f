"""load_corpus: builtin offline corpora, Hugging Face datasets and local files -> Dataset.

Every corpus becomes a ``datasets.Dataset`` with columns text, source (where each document came
from) and row_id (its position), plus ``messages`` for chat data.
"""
from engine.corpus.builtin import builtin_documents
from engine.corpus.documents import column, corpus_notes
from engine.corpus.files import SUPPORTED as SUPPORTED_FILE_TYPES
from engine.corpus.files import check_file, read_text_file
from engine.corpus.hub import HUB_RECIPES
from engine.corpus.loading import EXPANSION, READ_OVERHEAD, load_corpus
from engine.corpus.summary import corpus_summary, notes_rows
from engine.corpus.tables import json_records, read_parquet

__all__ = ["EXPANSION", "HUB_RECIPES", "READ_OVERHEAD", "SUPPORTED_FILE_TYPES", "builtin_documents", "check_file", "column",
           "corpus_notes", "corpus_summary", "json_records", "load_corpus", "notes_rows", "read_parquet", "read_text_file"]
