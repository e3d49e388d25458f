import pytest

from engine import CorpusKind, CorpusSpec, ModelSpec, SpecError


def test_model_spec_defaults_to_the_builtin_model():
    spec = ModelSpec()
    assert spec.name == "builtin:gemma-3-270m" and spec.device == "auto" and spec.dtype == "auto"


def test_model_spec_strips_whitespace_and_is_hashable():
    assert ModelSpec("  tiny-random-llama ") == ModelSpec("tiny-random-llama")
    assert len({ModelSpec("a/b"), ModelSpec("a/b")}) == 1


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"name": "  "}, "empty"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"device_map": "balanced"}, "device_map"),
    ],
)
def test_model_spec_rejects_bad_values_with_the_allowed_ones(kwargs, words):
    with pytest.raises(SpecError) as raised:
        ModelSpec(**kwargs)
    assert words in str(raised.value)


def test_corpus_spec_constructors_and_labels():
    assert CorpusSpec.builtin("python-docs", split="test").label == "builtin:python-docs[test]"
    assert CorpusSpec.hub("wikitext2").kind is CorpusKind.HUB
    assert CorpusSpec.file("/data/notes.txt").label == "file:notes.txt"
    assert CorpusSpec(kind="builtin").kind is CorpusKind.BUILTIN


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"kind": "s3"}, "kind='s3'"),
        ({"kind": "builtin", "name": "novels"}, "'python-docs'"),
        ({"kind": "builtin", "split": "dev"}, "split='dev'"),
        ({"txt_mode": "sentences"}, "txt_mode"),
        ({"min_chars": 0}, "min_chars"),
        ({"max_documents": 0}, "max_documents"),
    ],
)
def test_corpus_spec_rejects_bad_values(kwargs, words):
    with pytest.raises(SpecError) as raised:
        CorpusSpec(**kwargs)
    assert words in str(raised.value)
