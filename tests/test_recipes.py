"""Published GPTQ recipes reproduced bit for bit: each against an independent transcription of its
reference function, on rows of the shared wikitext text."""
from __future__ import annotations

import random

import pytest

from engine.errors import SamplingError
from engine.sampling import GptqWindowsSpec, build
from engine.sampling.recipes import rows_dataset
from engine.sampling.specs import Recipe

SEQLEN, NSAMPLES = 64, 12


@pytest.fixture(scope="module")
def rows(wikitext_path):
    """The first 400 rows as the `wikitext` dataset holds them: each line with its newline kept,
    empty rows empty (the raw file's lines end in \\r\\n)."""
    lines = wikitext_path.read_bytes().decode("utf-8").split("\n")[:400]
    return [line.replace("\r", "") + "\n" if line.strip() else "" for line in lines]


def gptq_get_wikitext2(rows, tokenizer, nsamples, seed, seqlen, join="\n\n"):
    """datautils.get_wikitext2 (and get_ptb with its own join), transcribed."""
    trainenc = tokenizer(join.join(rows), return_tensors="pt")
    random.seed(seed)
    trainloader = []
    for _ in range(nsamples):
        i = random.randint(0, trainenc.input_ids.shape[1] - seqlen - 1)
        trainloader.append(trainenc.input_ids[:, i:i + seqlen])
    return trainloader


def optimum_get_wikitext2(rows, tokenizer, nsamples, seed, seqlen):
    random.seed(seed)
    text = "".join([" \n" if s == "" else s for s in rows])
    enc = tokenizer(text, return_tensors="pt")
    dataset = []
    for _ in range(nsamples):
        i = random.randint(0, enc.input_ids.shape[1] - seqlen - 1)
        dataset.append(enc.input_ids[:, i:i + seqlen])
    return dataset


def c4_style(rows, tokenizer, nsamples, seed, seqlen, strictly_longer: bool):
    """gptq's get_c4 (> seqlen) and optimum's get_c4 / get_c4_new (>= seqlen), transcribed."""
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(rows) - 1)
            enc = tokenizer(rows[i], return_tensors="pt")
            if (enc.input_ids.shape[1] > seqlen) if strictly_longer else (enc.input_ids.shape[1] >= seqlen):
                break
        i = random.randint(0, enc.input_ids.shape[1] - seqlen - 1)
        out.append(enc.input_ids[:, i:i + seqlen])
    return out


def windows(tokenizer, rows, recipe, seed=0):
    spec = GptqWindowsSpec(nsamples=NSAMPLES, length=SEQLEN, seed=seed, recipe=recipe)
    return build(rows_dataset(rows, "wikitext"), tokenizer, spec)


def same(ours, reference) -> bool:
    return [s.tolist() for s in ours.sequences] == [t[0].tolist() for t in reference]


@pytest.mark.parametrize("seed", [0, 7])
def test_joined_recipes_equal_their_reference_functions(tiny_llama, rows, seed):
    tokenizer = tiny_llama.tokenizer
    assert same(windows(tokenizer, rows, Recipe.GPTQ_WIKITEXT2, seed),
                gptq_get_wikitext2(rows, tokenizer, NSAMPLES, seed, SEQLEN))
    assert same(windows(tokenizer, rows, Recipe.GPTQ_PTB, seed), gptq_get_wikitext2(rows, tokenizer, NSAMPLES, seed, SEQLEN))
    assert same(windows(tokenizer, rows, Recipe.OPTIMUM_WIKITEXT2, seed),
                optimum_get_wikitext2(rows, tokenizer, NSAMPLES, seed, SEQLEN))
    assert same(windows(tokenizer, rows, Recipe.OPTIMUM_PTB, seed),
                gptq_get_wikitext2(rows, tokenizer, NSAMPLES, seed, SEQLEN, join=" "))


def test_document_recipes_equal_their_reference_functions(tiny_llama, rows):
    tokenizer = tiny_llama.tokenizer
    documents = [row for row in rows if row]  # c4 rows are documents, none empty
    assert same(windows(tokenizer, documents, Recipe.GPTQ_C4), c4_style(documents, tokenizer, NSAMPLES, 0, SEQLEN, True))
    for recipe in (Recipe.OPTIMUM_C4, Recipe.OPTIMUM_C4_NEW):
        assert same(windows(tokenizer, documents, recipe), c4_style(documents, tokenizer, NSAMPLES, 0, SEQLEN, False))
    built = windows(tokenizer, documents, Recipe.GPTQ_C4)
    assert built.manifest.params["recipe"] == "gptq-reference c4" and "Python random seeded with 0" in built.notes[-1]


def test_optimums_exact_length_quirk_is_named_not_a_traceback(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    exact = "x" * (SEQLEN - 1)  # BOS + 63 bytes: exactly SEQLEN tokens, the only document
    with pytest.raises(ValueError):  # the reference itself
        c4_style([exact], tokenizer, 1, 0, SEQLEN, False)
    with pytest.raises(SamplingError, match="exactly 64 tokens.*randint\\(0, -1\\)"):
        windows(tokenizer, [exact], Recipe.OPTIMUM_C4)
    with pytest.raises(SamplingError, match="no usable document"):  # gptq's > never accepts it: it would loop forever
        build(rows_dataset([exact]), tokenizer,
              GptqWindowsSpec(nsamples=1, length=SEQLEN, recipe=Recipe.GPTQ_C4, max_attempts=50))


def test_calibscope_recipe_is_unchanged_and_the_manifest_rebuilds_a_reference_set(tiny_llama, rows):
    from engine.sampling import rebuild

    tokenizer = tiny_llama.tokenizer
    built = windows(tokenizer, rows, Recipe.OPTIMUM_WIKITEXT2, seed=3)
    again = rebuild(built.manifest, rows_dataset(rows, "wikitext"), tokenizer)
    assert again.manifest.token_sha256 == built.manifest.token_sha256
    ours = build(rows_dataset(rows), tokenizer, GptqWindowsSpec(nsamples=NSAMPLES, length=SEQLEN))
    assert all(s[0] == tokenizer.bos_token_id for s in ours.sequences)  # calibscope's: BOS as at inference
