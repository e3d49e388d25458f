"""load_corpus: builtin offline corpora, Hugging Face datasets and local files -> Dataset.

Every corpus becomes a ``datasets.Dataset`` with columns text, source (where each document came
from) and row_id (its position), plus ``messages`` for chat data.
"""
from engine.corpus.documents import corpus_notes
from engine.corpus.files import SUPPORTED as SUPPORTED_FILE_TYPES
from engine.corpus.files import check_file
from engine.corpus.hub import HUB_RECIPES
from engine.corpus.loading import EXPANSION, READ_OVERHEAD, load_corpus
from engine.corpus.summary import corpus_summary, notes_rows

__all__ = ["EXPANSION", "HUB_RECIPES", "READ_OVERHEAD", "SUPPORTED_FILE_TYPES", "check_file", "corpus_notes", "corpus_summary",
           "load_corpus", "notes_rows"]
