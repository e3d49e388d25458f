"""Hugging Face hub datasets: the recipes quantization tools use, and any dataset id.

Recipes follow the GPTQ reference code's sources: wikitext2 is ``wikitext-2-raw-v1``; c4 and
c4-new read the first English shard of ``allenai/c4`` (streamed: a shard is ~350k documents);
pileval is the validation set of the Pile that AWQ calibrates on.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import datasets

from engine import guard
from engine.errors import CalibscopeError, CorpusError
from engine.specs import CorpusSpec

DEFAULT_STREAMED_DOCUMENTS = 20_000
_C4_FILES = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "validation": "en/c4-validation.00000-of-00008.json.gz",
}


@dataclass(frozen=True)
class HubRecipe:
    path: str
    config: str | None = None
    text_column: str = "text"
    data_files: dict[str, str] = field(default_factory=dict)
    streaming: bool = False
    split_alias: dict[str, str] = field(default_factory=dict)


HUB_RECIPES: dict[str, HubRecipe] = {
    "wikitext2": HubRecipe("wikitext", "wikitext-2-raw-v1"),
    "c4": HubRecipe("allenai/c4", data_files=_C4_FILES, streaming=True, split_alias={"test": "validation"}),
    "c4-new": HubRecipe("allenai/c4", data_files=_C4_FILES, streaming=True, split_alias={"test": "validation"}),
    "pileval": HubRecipe("mit-han-lab/pile-val-backup", streaming=True, split_alias={"train": "validation"}),
}


def offline_message(what: str, error: Exception) -> str:
    return (
        f"Could not load {what} from the Hugging Face hub ({type(error).__name__}: "
        f"{str(error).splitlines()[0][:200] if str(error) else 'no detail'}). If this machine is offline, "
        "use a builtin corpus (python-docs, python-code, mixed) or upload a file (.txt, .jsonl, .csv, .parquet)."
    )


def _recipe_for(spec: CorpusSpec) -> HubRecipe:
    if spec.name in HUB_RECIPES:
        return HUB_RECIPES[spec.name]
    policy = guard.current().policy  # a visitor's id reaches load_dataset: a hub id, never a folder of the server
    return HubRecipe(policy.dataset_name(spec.name), policy.hub_word(spec.config, "dataset config"),
                     text_column=spec.text_column or "text", streaming=True)


def hub_documents(spec: CorpusSpec) -> Iterator[tuple[str, str]]:
    """(text, source) pairs from a hub dataset; errors become CorpusError with alternatives."""
    recipe = _recipe_for(spec)
    split = guard.current().policy.hub_word(recipe.split_alias.get(spec.split, spec.split), "split")
    counter = guard.current().reading.counter(spec.name)
    kwargs = {"split": split, "streaming": recipe.streaming}
    if recipe.data_files:
        kwargs["data_files"] = {split: recipe.data_files[split]} if split in recipe.data_files else recipe.data_files
    try:
        rows = datasets.load_dataset(recipe.path, recipe.config, **kwargs)
    except Exception as error:  # network, missing split, unknown id: all end here for the user
        raise CorpusError(offline_message(f"'{spec.name}' (split {split})", error)) from error
    column = spec.text_column or recipe.text_column
    limit = spec.max_documents or (DEFAULT_STREAMED_DOCUMENTS if recipe.streaming else None)
    try:
        for index, row in enumerate(rows):
            if limit is not None and index >= limit * 4:  # enough raw rows for `limit` kept ones
                break
            if column not in row:
                raise CorpusError(
                    f"'{spec.name}' has no column '{column}'. Its columns: {', '.join(row)}. Set the text column."
                )
            text = str(row[column] or "")
            counter.add(len(text))
            yield text, f"{spec.name}:{split}#{index}"
    except CalibscopeError:
        raise
    except Exception as error:
        raise CorpusError(offline_message(f"'{spec.name}' (split {split})", error)) from error
