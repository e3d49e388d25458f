"""Calibration set builders on synthetic corpora with known token lengths (1 byte = 1 token here)."""
import dataclasses

import datasets
import numpy as np
import pytest

from engine import SamplingError, SpecError
from engine.sampling import (
    GptqWindowsSpec,
    LengthStratifiedSpec,
    Manifest,
    PackedSpec,
    RandomSpec,
    build,
    rebuild,
    spec_from_manifest,
    spec_from_params,
)
from engine.sampling.allocation import allocate, spread
from engine.sampling.length_stratified import candidate_pieces
from engine.sampling.tokens import encode, inference_prefix, token_lengths

BOS = 1


def corpus(lengths, letter="abcdefghij"):
    """Documents of exactly the given token lengths (distinct content per document)."""
    texts = [(letter[i % len(letter)] * n) for i, n in enumerate(lengths)]
    return datasets.Dataset.from_dict({"text": texts, "source": [f"doc{i}" for i in range(len(texts))],
                                       "row_id": list(range(len(texts)))})


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return tiny_llama.tokenizer


def test_inference_prefix_and_batched_tokenization_match_inference(tokenizer):
    assert inference_prefix(tokenizer) == [BOS]
    texts = ["Hello world", "naïve café ☕", "x" * 3000]
    lengths = token_lengths(tokenizer, texts)
    for text, length, ids in zip(texts, lengths, encode(tokenizer, texts)):
        assert [BOS, *ids.tolist()] == tokenizer(text).input_ids  # exactly what inference sees
        assert length == len(ids)


def test_token_lengths_are_measured_once_per_tokenizer_and_corpus(tokenizer, monkeypatch):
    from engine.sampling import tokens

    measured = []
    original = tokens._measure_lengths
    monkeypatch.setattr(tokens, "_measure_lengths", lambda *args: measured.append(1) or original(*args))
    first = token_lengths(tokenizer, ["one corpus", "of two documents"])
    first[0] = -1  # the caller's copy: the remembered lengths stay as measured
    again = token_lengths(tokenizer, ["one corpus", "of two documents"])
    other = token_lengths(tokenizer, ["one corpus", "of two other documents"])
    assert len(measured) == 2 and again[0] > 0 and other[1] > again[1]


@pytest.mark.parametrize(
    "available, nsamples, mode, asked, selected",
    [
        ([10, 10, 10], 9, "equal", [3, 3, 3], [3, 3, 3]),
        ([10, 0, 10], 9, "equal", [3, 3, 3], [5, 0, 4]),    # empty bucket's share passed on
        ([1, 50, 50, 50], 12, "equal", [3, 3, 3, 3], [1, 4, 4, 3]),
        ([10, 30, 60], 10, "proportional", [1, 3, 6], [1, 3, 6]),
        ([2, 2, 2], 10, "equal", [4, 3, 3], [2, 2, 2]),     # the corpus has fewer than asked
    ],
)
def test_allocation_is_exact_and_redistributes(available, nsamples, mode, asked, selected):
    got_asked, got_selected = allocate(np.array(available), nsamples, mode)
    assert got_asked.sum() == nsamples and got_selected.sum() == min(nsamples, sum(available))
    assert (got_selected <= np.array(available)).all()
    assert got_selected.tolist() == selected
    if mode == "proportional" or sum(available) >= nsamples:
        assert got_asked.tolist() == asked


def test_spread_respects_caps():
    assert spread(10, np.array([1.0, 1.0, 1.0]), np.array([1, 100, 2])).tolist() == [1, 7, 2]


def test_candidate_pieces_cut_long_documents_into_windows():
    document, offset, count = candidate_pieces(np.array([5, 10, 23]), body=10)
    assert document.tolist() == [0, 1, 2, 2, 2]
    assert offset.tolist() == [0, 0, 0, 10, 20] and count.tolist() == [5, 10, 10, 10, 3]


def test_random_returns_distinct_documents_and_counts_truncation(tokenizer):
    data = corpus([50] * 20 + [500] * 10)
    cs = build(data, tokenizer, RandomSpec(nsamples=25, length=100, seed=3))
    assert len(cs) == 25 and len({p.row_id for p in cs.provenance}) == 25
    assert all(s[0] == BOS and len(s) <= 100 for s in cs.sequences)
    long_rows = [p for p in cs.provenance if p.document_tokens == 500]
    assert all(p.truncated for p in long_rows) and cs.summary()["truncated"] == len(long_rows)


def test_random_with_too_few_documents_returns_them_all_and_says_so(tokenizer):
    cs = build(corpus([40] * 5), tokenizer, RandomSpec(nsamples=50, length=64))
    assert len(cs) == 5 and cs.asked == 50
    assert any("returning 5 of the 50 asked" in note for note in cs.notes)
    assert ("Samples", "5 (asked 50)") in cs.summary_rows()


def test_stratified_counts_per_bucket_and_lengths_inside_buckets(tokenizer):
    data = corpus([30] * 40 + [100] * 40 + [200] * 40 + [400] * 40)
    spec = LengthStratifiedSpec(nsamples=20, edges=(64, 128, 256, 512))
    cs = build(data, tokenizer, spec)
    assert cs.buckets["selected"].tolist() == [5, 5, 5, 5]
    assert cs.buckets["available"].tolist() == [40, 40, 40, 40]
    bounds = {"1–64": (1, 64), "65–128": (65, 128), "129–256": (129, 256), "257–512": (257, 512)}
    for sequence, provenance in zip(cs.sequences, cs.provenance):
        low, high = bounds[provenance.bucket]
        assert low <= len(sequence) <= high  # lengths include BOS


def test_stratified_redistributes_an_empty_bucket_and_returns_exactly_nsamples(tokenizer):
    data = corpus([30] * 40 + [200] * 40 + [400] * 3)  # nothing between 65 and 128; few long ones
    cs = build(data, tokenizer, LengthStratifiedSpec(nsamples=24, edges=(64, 128, 256, 512)))
    assert len(cs) == 24
    table = cs.buckets.set_index("bucket")
    assert table.loc["65–128", "selected"] == 0 and table.loc["257–512", "selected"] == 3
    assert table["selected"].sum() == 24 and (table["asked"] == 6).all()
    assert any("shortfall" in note for note in cs.notes)


def test_stratified_cuts_documents_longer_than_the_last_edge(tokenizer):
    data = corpus([2000, 40, 40])
    cs = build(data, tokenizer, LengthStratifiedSpec(nsamples=7, edges=(64, 512)))
    windows = [(p.token_offset, len(s)) for s, p in zip(cs.sequences, cs.provenance) if p.row_id == 0]
    assert len(cs) == 6 and len(windows) == 4  # 2000 tokens -> 511 + 511 + 511 + 467, none dropped
    assert sorted(windows) == [(0, 512), (511, 512), (1022, 512), (1533, 468)]
    assert all(s[0] == BOS for s in cs.sequences)


def test_gptq_joined_windows_are_exact_and_in_bounds(tokenizer):
    data = corpus([300] * 10)
    cs = build(data, tokenizer, GptqWindowsSpec(nsamples=50, length=128, seed=0))
    joined = tokenizer("\n\n".join(data["text"]), add_special_tokens=False).input_ids
    assert all(len(s) == 128 and s[0] == BOS for s in cs.sequences)
    for sequence, provenance in zip(cs.sequences, cs.provenance):
        start = provenance.row_id * 302 + provenance.token_offset  # 300 tokens + "\n\n" per document
        assert sequence[1:].tolist() == joined[start:start + 127]


def test_gptq_without_bos_reproduces_raw_windows(tokenizer):
    cs = build(corpus([300] * 4), tokenizer, GptqWindowsSpec(nsamples=5, length=64, add_bos=False))
    assert all(len(s) == 64 and s[0] != BOS for s in cs.sequences)
    assert cs.manifest.tokenizer["prefix_ids"] == []


def test_gptq_documents_accepts_a_document_of_exactly_window_length(tokenizer):
    data = corpus([127, 20, 30, 126])  # only document 0 has the 127 tokens a BOS + 127 window needs
    cs = build(data, tokenizer, GptqWindowsSpec(nsamples=3, length=128, mode="documents"))
    assert {p.row_id for p in cs.provenance} == {0} and {p.token_offset for p in cs.provenance} == {0}
    assert all(len(s) == 128 for s in cs.sequences)


def test_gptq_documents_errors_instead_of_looping(tokenizer):
    with pytest.raises(SamplingError, match="joined"):
        build(corpus([50, 60]), tokenizer, GptqWindowsSpec(nsamples=2, length=128, mode="documents"))
    rare = corpus([10] * 3000 + [200])
    with pytest.raises(SamplingError, match="document draws"):
        build(rare, tokenizer, GptqWindowsSpec(nsamples=5, length=128, mode="documents", max_attempts=100))


def test_gptq_joined_corpus_too_small_is_a_clear_error(tokenizer):
    with pytest.raises(SamplingError, match="only 22 tokens"):
        build(corpus([10, 10]), tokenizer, GptqWindowsSpec(nsamples=1, length=128))


def test_packed_blocks_are_full_and_separated_by_eos(tokenizer):
    cs = build(corpus([100] * 30), tokenizer, PackedSpec(nsamples=6, length=256))
    assert len(cs) == 6 and all(len(s) == 256 and s[0] == BOS for s in cs.sequences)
    eos = tokenizer.eos_token_id
    assert sum(int((s == eos).sum()) for s in cs.sequences) >= 6 * 255 // 101 - 1
    few = build(corpus([100] * 3), tokenizer, PackedSpec(nsamples=6, length=256))
    assert len(few) == 1 and any("1 blocks of the 6 asked" in n for n in few.notes)


@pytest.mark.parametrize(
    "spec",
    [RandomSpec(nsamples=10, length=64), LengthStratifiedSpec(nsamples=10, edges=(32, 64, 128)),
     GptqWindowsSpec(nsamples=10, length=64), GptqWindowsSpec(nsamples=10, length=64, mode="documents"),
     PackedSpec(nsamples=10, length=64)],
    ids=lambda spec: f"{spec.strategy.value}-{getattr(spec, 'mode', '')}",
)
def test_deterministic_by_seed_and_manifest_rebuilds_bit_for_bit(tokenizer, spec):
    data = corpus([20, 50, 90, 130, 70, 40, 300, 10, 25, 60, 80, 100] * 3)
    first, second = build(data, tokenizer, spec, corpus_label="syn"), build(data, tokenizer, spec, corpus_label="syn")
    assert first.manifest.token_sha256 == second.manifest.token_sha256
    assert all((a == b).all() for a, b in zip(first.sequences, second.sequences))
    other_seed = build(data, tokenizer, type(spec)(**{**first.manifest.params, "seed": 7}))
    assert other_seed.manifest.token_sha256 != first.manifest.token_sha256
    restored = Manifest.from_json(first.manifest.to_json())
    assert restored == first.manifest
    rebuilt = rebuild(restored, data, tokenizer)
    assert rebuilt.manifest.token_sha256 == first.manifest.token_sha256 and rebuilt.manifest.rows == first.manifest.rows


def test_rebuild_refuses_another_corpus(tokenizer):
    cs = build(corpus([50] * 10), tokenizer, RandomSpec(nsamples=3))
    with pytest.raises(SamplingError, match="corpus differs"):
        rebuild(cs.manifest, corpus([51] * 10), tokenizer)


def test_batches_pad_on_the_tokenizers_side_with_masks(tokenizer):
    cs = build(corpus([10, 30, 20]), tokenizer, RandomSpec(nsamples=3, seed=1, min_tokens=1))
    lengths = cs.lengths.tolist()
    (batch,) = list(cs.batches(batch_size=3))
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, length in enumerate(lengths):  # right padding for this tokenizer: real tokens first
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
    assert cs.padding_fraction(3) == pytest.approx(1 - sum(lengths) / (3 * max(lengths)))
    cs.padding_side = "left"
    ids, mask = cs.pad()
    assert mask[:, -1].all() and ids[0, -1] == cs.sequences[0][-1]


def test_length_beyond_the_model_is_clamped_with_a_note(tokenizer):
    cs = build(corpus([400] * 5), tokenizer, GptqWindowsSpec(nsamples=2, length=4096), max_positions=256)
    assert all(len(s) == 256 for s in cs.sequences) and cs.spec.length == 256
    assert any("clamped to 256" in note for note in cs.notes)


def test_empty_corpus_is_an_error(tokenizer):
    with pytest.raises(SamplingError, match="empty"):
        build(corpus([]), tokenizer, RandomSpec(nsamples=1))


def test_chat_messages_use_the_chat_template(tokenizer):
    import copy
    import json

    chatty = copy.deepcopy(tokenizer)
    chatty.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    data = datasets.Dataset.from_dict({"text": ["user: hi\n\nassistant: hello"], "source": ["c"], "row_id": [0],
                                       "messages": [json.dumps(messages)]})
    templated = build(data, chatty, RandomSpec(nsamples=1))
    assert chatty.decode(templated.sequences[0][1:]) == "<user>hi\n<assistant>hello\n"
    plain = build(data, chatty, RandomSpec(nsamples=1, chat_template=False))
    assert chatty.decode(plain.sequences[0][1:]) == "user: hi\n\nassistant: hello"
    assert templated.manifest.corpus["chat_format"] == "chat template" and not templated.notes
    assert plain.manifest.corpus["chat_format"] == "plain 'role: content' text" and not plain.notes
    fallback = build(data, tokenizer, RandomSpec(nsamples=1))  # asked for the template; the tokenizer has none
    assert fallback.manifest.corpus["chat_format"] == "plain 'role: content' text"
    assert any("no chat template" in note for note in fallback.notes)


@pytest.mark.slow
def test_gemma_windows_start_like_inference_and_pad_left(gemma, wikitext_path):
    from engine import CorpusSpec, load_corpus

    data = load_corpus(CorpusSpec.file(wikitext_path, max_documents=400))
    tok = gemma.tokenizer
    for text in data["text"][:20]:
        assert [tok.bos_token_id, *encode(tok, [text])[0].tolist()] == tok(text).input_ids
    cs = build(data, tok, GptqWindowsSpec(nsamples=4, length=512), max_positions=gemma.info.max_positions)
    assert all(len(s) == 512 and s[0] == tok.bos_token_id == 2 for s in cs.sequences)
    stratified = build(data, tok, LengthStratifiedSpec(nsamples=12, edges=(64, 128, 256)))
    _ids, mask = stratified.pad()
    assert stratified.padding_side == "left" and mask[:, -1].all()  # Gemma pads on the left
    assert len(stratified) == 12


def test_manifests_and_configs_with_the_old_length_names_still_load(tokenizer):
    cs = build(corpus([120] * 6), tokenizer, GptqWindowsSpec(nsamples=3, length=64, seed=2))
    recorded = dataclasses.replace(cs.manifest, params={**{k: v for k, v in cs.manifest.params.items() if k != "length"},
                                                        "seqlen": 64})
    assert spec_from_manifest(recorded) == cs.spec
    assert spec_from_params("random", {"nsamples": 4, "max_length": 99}) == RandomSpec(nsamples=4, length=99)
    with pytest.raises(SpecError, match="does not take"):
        spec_from_params("packed", {"nsamples": 4, "edges": [8, 16]})


def test_one_minimum_sample_length_for_every_entry_point():
    """The dashboard, run configs and the API draw no sample shorter than MIN_TOKENS by default (a
    run config's [sampling] section builds its spec with from_params, as here)."""
    from engine.sampling import Strategy, spec_for
    from engine.sampling.specs import MIN_TOKENS
    from ui.tabs.dataset import DatasetForm

    for strategy in (Strategy.RANDOM, Strategy.LENGTH_STRATIFIED, Strategy.EMBEDDING_CLUSTERS, Strategy.COVERAGE):
        assert spec_for(strategy.value, nsamples=4, length=256).min_tokens == MIN_TOKENS
    assert RandomSpec.from_params({"nsamples": 4, "length": 64}).min_tokens == MIN_TOKENS
    assert DatasetForm.__dataclass_fields__["min_tokens"].default == MIN_TOKENS
    assert RandomSpec(length=8).min_tokens == 8  # a shorter sample length lowers it
    with pytest.raises(SpecError, match="above the sample length"):
        RandomSpec(length=8, min_tokens=12)
