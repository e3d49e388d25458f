"""Shared fixtures. Tests run offline: no hub downloads, tiny models, data from ../shared."""
from __future__ import annotations

import os

# Set before transformers/datasets are imported anywhere: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2-raw-test" / "wiki.test.raw"


@pytest.fixture(scope="session")
def wikitext_path() -> Path:
    if not WIKITEXT.is_file():
        pytest.skip(f"reference data absent: {WIKITEXT} (see ../shared/data/README.md)")
    return WIKITEXT


@pytest.fixture(scope="session")
def tiny_llama():
    from engine import ModelSpec, load_model

    return load_model(ModelSpec("tiny-random-llama"))


@pytest.fixture(scope="session")
def gemma():
    """The real builtin model, loaded once per test session (weight cache after the first run)."""
    from engine import ModelSpec, load_model

    return load_model(ModelSpec("builtin:gemma-3-270m"))
