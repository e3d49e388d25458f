"""Labels shared by widgets and handlers: one source of truth, so a renamed choice cannot drift."""
from __future__ import annotations

from engine.corpus import HUB_RECIPES
from engine.models import MOEFIED, MOEFIED_DENSE, TINY_MODELS, available_builtin_models
from engine.specs import DEVICES, BuiltinCorpus, CorpusKind, DType, Split, labels

DEFAULT_MODEL = "builtin:gemma-3-270m"
CORPUS_KINDS = [kind.value for kind in CorpusKind]
BUILTIN_CORPORA = [corpus.value for corpus in BuiltinCorpus]
SPLITS = [split.value for split in Split]
HUB_DATASETS = list(HUB_RECIPES)


def model_choices() -> list[str]:
    """Builtin models installed here (and the MoE made from the builtin Gemma), then the instant tiny
    models; any hub id may be typed too."""
    builtin = available_builtin_models()
    return [*builtin, *([MOEFIED] if MOEFIED_DENSE in builtin else []), *TINY_MODELS]


def default_model() -> str:
    choices = model_choices()
    return DEFAULT_MODEL if DEFAULT_MODEL in choices else choices[0]


DEVICE_CHOICES = list(DEVICES)
DTYPE_CHOICES = labels(DType)
DTYPE_HELP = "auto: bf16 on GPUs and on CPUs with native bf16, fp32 elsewhere"
