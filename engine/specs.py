"""Frozen, validated specs: the plain inputs of every engine stage.

Each spec checks itself in ``__post_init__`` and raises ``SpecError`` with a message that says
what was wrong and what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from engine.errors import SpecError

AUTO = "auto"
DEVICES = (AUTO, "cpu", "cuda", "mps")  # and "cuda:N": an open vocabulary, checked by prefix
DEVICE_MAPS = (None, AUTO)
DEFAULT_MAX_CORPUS_BYTES = 200 * 1024 * 1024


E = TypeVar("E", bound=Enum)


class DType(str, Enum):
    """The dtype a model computes in; auto: bfloat16 on CUDA and on CPUs with native bfloat16
    arithmetic, float32 elsewhere."""

    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Offload(str, Enum):
    """Where a model's weights wait while calibration runs block by block. none: every weight on the
    device; cpu: in CPU memory, each block moved to the device for its turn; disk: read from the
    safetensors checkpoint block by block, so the whole model is never in memory; auto: none when
    the model fits on the device, else cpu when it fits in CPU memory, else disk."""

    AUTO = "auto"
    NONE = "none"
    CPU = "cpu"
    DISK = "disk"


class TxtMode(str, Enum):
    """How a text file is cut into documents."""

    PARAGRAPHS = "paragraphs"
    LINES = "lines"
    FILE = "file"


class CorpusKind(str, Enum):
    """Where a corpus comes from. The values are the labels the UI shows."""

    BUILTIN = "builtin"
    HUB = "hub"
    FILE = "file"


class BuiltinCorpus(str, Enum):
    """The offline corpora that ship with every Python installation."""

    PYTHON_DOCS = "python-docs"
    PYTHON_CODE = "python-code"
    MIXED = "mixed"


class Split(str, Enum):
    """Which part of a builtin corpus: calibration (train), held-out evaluation (test), or all."""

    TRAIN = "train"
    TEST = "test"
    ALL = "all"


def _choice_error(field: str, value: object, allowed: tuple) -> SpecError:
    shown = ", ".join(repr(a) for a in allowed)
    return SpecError(f"{field}={value!r} is not supported; use one of {shown}.")


def choice(vocabulary: type[E], value: object, field: str) -> E:
    """``value`` as a member of the str-Enum ``vocabulary`` (its label or the member itself), or a
    SpecError naming the field and every allowed label. Specs call it in ``__post_init__``."""
    try:
        return vocabulary(value)
    except ValueError:
        raise _choice_error(field, value, tuple(member.value for member in vocabulary)) from None


def labels(vocabulary: type[Enum]) -> list[str]:
    """The labels a widget shows for a vocabulary, in its declared order."""
    return [member.value for member in vocabulary]


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and where.

    name: ``builtin:gemma-3-270m``, ``builtin:smollm2-135m``, ``tiny-random-llama``,
    ``tiny-random-gpt2``, a Hugging Face model id (``org/name``) or a local directory.
    device: ``auto`` picks cuda, then mps, then cpu (``cuda:1`` selects a GPU).
    dtype: see ``DType``. offload: see ``Offload`` (calibration then runs block by block).
    device_map: ``"auto"`` spreads a model too large for one GPU over the GPUs and the CPU.
    Remote code is never trusted.
    """

    name: str = "builtin:gemma-3-270m"
    device: str = AUTO
    dtype: DType = DType.AUTO
    device_map: str | None = None
    revision: str | None = None
    offload: Offload = Offload.AUTO

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise SpecError("The model name is empty; pick a builtin model or give a Hugging Face id.")
        if self.name != self.name.strip():
            object.__setattr__(self, "name", self.name.strip())
        if self.device.split(":")[0] not in DEVICES:
            raise _choice_error("device", self.device, DEVICES + ("cuda:N",))
        object.__setattr__(self, "dtype", choice(DType, self.dtype, "dtype"))
        object.__setattr__(self, "offload", choice(Offload, self.offload, "offload"))
        if self.device_map not in DEVICE_MAPS:
            raise _choice_error("device_map", self.device_map, DEVICE_MAPS)


@dataclass(frozen=True)
class CorpusSpec:
    """Which text to calibrate on.

    kind=builtin: name is one of ``BuiltinCorpus``; split picks the calibration part (train, 90%),
    the held-out part (test, 10%) or all, by a stable hash of each document's source.
    kind=hub: name is a recipe (wikitext2, c4, c4-new, pileval) or a dataset id with ``config``,
    ``split`` and ``text_column``.
    kind=file: name is a path to .txt, .jsonl, .json, .csv or .parquet (or a folder of .txt files);
    ``text_column`` chooses the column of tables; ``txt_mode`` splits text files into paragraphs
    (blank-line separated, or one per line in a file without blank lines), lines, or keeps each
    file whole.
    Documents shorter than ``min_chars`` after stripping are dropped; at most ``max_documents`` are
    kept; local files larger than ``max_bytes`` are refused.
    """

    kind: CorpusKind = CorpusKind.BUILTIN
    name: str = BuiltinCorpus.MIXED.value
    split: str = Split.TRAIN.value
    config: str | None = None
    text_column: str | None = None
    txt_mode: TxtMode = TxtMode.PARAGRAPHS
    min_chars: int = 16
    max_documents: int | None = None
    max_bytes: int = DEFAULT_MAX_CORPUS_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", choice(CorpusKind, self.kind, "kind"))
        object.__setattr__(self, "txt_mode", choice(TxtMode, self.txt_mode, "txt_mode"))
        if not self.name or not str(self.name).strip():
            raise SpecError("The corpus name is empty; pick a builtin corpus, a hub dataset or a file.")
        if self.kind is CorpusKind.BUILTIN:
            allowed = tuple(c.value for c in BuiltinCorpus)
            if self.name not in allowed:
                raise _choice_error("builtin corpus", self.name, allowed)
            if self.split not in tuple(s.value for s in Split):
                raise _choice_error("split", self.split, tuple(s.value for s in Split))
        if self.min_chars < 1:
            raise SpecError(f"min_chars={self.min_chars} must be at least 1.")
        if self.max_documents is not None and self.max_documents < 1:
            raise SpecError(f"max_documents={self.max_documents} must be at least 1 (or None for all).")
        if self.max_bytes < 1:
            raise SpecError(f"max_bytes={self.max_bytes} must be positive.")

    @classmethod
    def builtin(cls, name: str = BuiltinCorpus.MIXED.value, split: str = Split.TRAIN.value, **kw) -> CorpusSpec:
        return cls(kind=CorpusKind.BUILTIN, name=name, split=split, **kw)

    @classmethod
    def hub(cls, name: str, split: str = "train", **kw) -> CorpusSpec:
        return cls(kind=CorpusKind.HUB, name=name, split=split, **kw)

    @classmethod
    def file(cls, path: str, **kw) -> CorpusSpec:
        return cls(kind=CorpusKind.FILE, name=str(path), split=kw.pop("split", "train"), **kw)

    @property
    def label(self) -> str:
        """A short human name such as ``builtin:mixed[train]`` or ``file:notes.txt``."""
        if self.kind is CorpusKind.FILE:
            from pathlib import Path

            return f"file:{Path(self.name).name}"
        return f"{self.kind.value}:{self.name}[{self.split}]"
