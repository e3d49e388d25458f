"""Shared fixtures. Tests run offline: no hub downloads, tiny models, data from ../shared."""
from __future__ import annotations

import os

# Set before transformers/datasets are imported anywhere: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2-raw-test" / "wiki.test.raw"


def missing(what: str) -> None:
    """A tool or file a test needs is absent: a user's machine skips the test and says why; CI
    (CI=true) fails it, since CI installs everything and a skip there would hide a broken install."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must have it: {what}")
    pytest.skip(what)


@pytest.fixture(scope="session")
def wikitext_path() -> Path:
    if not WIKITEXT.is_file():
        missing(f"reference data absent: {WIKITEXT} (see ../shared/data/README.md)")
    return WIKITEXT


@pytest.fixture(scope="session")
def tiny_llama():
    """In float32: the reference tests check the accumulation against one-sequence-at-a-time
    forwards, and a bfloat16 forward (dtype auto on a CPU with native bf16) changes with the batch's
    shape by more than the tolerance. bfloat16 models have their own tests (tests/test_devices.py)."""
    from engine import ModelSpec, load_model

    return load_model(ModelSpec("tiny-random-llama", dtype="float32"))


@pytest.fixture(scope="session")
def gemma():
    """The real builtin model, loaded once per test session (weight cache after the first run)."""
    from engine import ModelSpec, load_model

    return load_model(ModelSpec("builtin:gemma-3-270m"))


TOPICS = {
    "cooking": "Simmer the onions in butter, add garlic and a pinch of salt, then fold in the cream. ",
    "astronomy": "The telescope resolved the spiral galaxy's arms and the redshift of distant quasars. ",
    "football": "The striker volleyed the ball past the goalkeeper in the final minute of the match. ",
    "finance": "The central bank raised interest rates as bond yields and inflation expectations climbed. ",
}


@pytest.fixture(scope="session")
def topical_corpus():
    import datasets

    texts, sources = [], []
    for topic, sentence in TOPICS.items():
        for i in range(10):
            texts.append(f"{sentence * (1 + i % 3)}Note {i}.")
            sources.append(topic)
    return datasets.Dataset.from_dict({"text": texts, "source": sources, "row_id": list(range(len(texts)))})
