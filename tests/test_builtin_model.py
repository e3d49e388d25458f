"""The real packaged model, loaded as users load it, checked on real text.

Guards the transformers range in pyproject: versions whose GGUF conversion mis-loads Gemma 3 fail
here (5.17 gives perplexity ~150 on wikitext windows where 5.23 gives ~23). The text is the builtin
python-docs held-out part, present wherever Python is, so the guard always runs: 16.4 with BOS and
45.1 without on 4 x 512 tokens (transformers 5.23).
"""
import pytest
import torch

from engine import CorpusSpec, ModelSpec, find_linear_layers, load_corpus, load_model
from engine.quant import evaluation_windows, perplexity
from tests.test_quant import direct_perplexity

pytestmark = pytest.mark.slow
WINDOW = 512
WINDOWS = 4


def _windows(tokenizer, text: str, with_bos: bool) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    body = WINDOW - 1 if with_bos else WINDOW  # BOS + 511 tokens, as a sequence starts at inference
    rows = [ids[i * body:(i + 1) * body] for i in range(WINDOWS)]
    if with_bos:
        rows = [[tokenizer.bos_token_id, *row] for row in rows]
    return torch.tensor(rows)


def test_gemma_loads_with_its_real_shape(gemma):
    info = gemma.info
    assert info.architecture == "Gemma3ForCausalLM"
    assert (info.layers, info.hidden_size, info.vocab_size) == (18, 640, 262144)
    assert 260e6 < info.parameters < 280e6
    layers = find_linear_layers(gemma.model)
    assert len(layers) == 18 * 7 + 1 and layers[-1].is_head and layers[0].name == "model.layers.0.self_attn.q_proj"
    assert gemma.tokenizer("hi").input_ids[0] == gemma.tokenizer.bos_token_id == 2


def test_gemma_second_load_comes_from_the_weight_cache(gemma):
    again = load_model(ModelSpec("builtin:gemma-3-270m"))
    assert again.info.from_cache
    name, weight = next(iter(gemma.model.state_dict().items()))
    assert torch.equal(again.model.state_dict()[name], weight)


@pytest.fixture(scope="module")
def held_out_docs() -> str:
    return "\n\n".join(load_corpus(CorpusSpec.builtin("python-docs", split="test"))["text"])[:200_000]


def test_gemma_perplexity_on_builtin_text_is_sane_and_needs_bos(gemma, held_out_docs):
    with_bos = direct_perplexity(gemma.model, _windows(gemma.tokenizer, held_out_docs, with_bos=True))
    without_bos = direct_perplexity(gemma.model, _windows(gemma.tokenizer, held_out_docs, with_bos=False))
    assert 8 < with_bos < 30, f"perplexity {with_bos:.1f}: the GGUF conversion looks wrong"
    assert without_bos > 1.5 * with_bos, (with_bos, without_bos)


def test_engine_perplexity_equals_the_direct_computation_on_gemma(held_out_docs):
    """The chunked LM head and the BOS-first windows give the model's own perplexity (in float32: a
    bfloat16 forward changes with the batch's shape, by up to ~1e-4 of the perplexity here)."""
    gemma = load_model(ModelSpec("builtin:gemma-3-270m", dtype="float32"))
    evaluation = evaluation_windows(gemma.tokenizer, [held_out_docs], WINDOW, 2, "python-docs")
    assert perplexity(gemma, evaluation) == pytest.approx(direct_perplexity(gemma.model, evaluation.windows), rel=1e-4)
