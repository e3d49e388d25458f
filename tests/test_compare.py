"""The comparison experiment on a tiny model: every cell measured, summaries right."""
import pytest

from engine.errors import SpecError
from engine.experiments.compare import ComparisonSpec, compare, summarize
from engine.quant import evaluation_windows
from engine.sampling import Strategy, build, spec_for


def test_every_strategy_gives_exactly_the_asked_count(topical_corpus, tiny_llama):
    for strategy in ComparisonSpec().strategies:
        calibration = build(topical_corpus, tiny_llama.tokenizer, spec_for(strategy, nsamples=6, length=64, seed=1),
                            model=tiny_llama)
        assert len(calibration) == 6 and calibration.lengths.max() <= 64, strategy


def test_compare_fills_the_grid_and_summarizes_over_seeds(topical_corpus, tiny_llama):
    spec = ComparisonSpec(strategies=("random", "embedding-clusters"), seeds=2, counts=(3, 6), length=48,
                          schemes=("W4 g128 GPTQ", "W8A8 static (p99.99)"))
    evaluations = [evaluation_windows(tiny_llama.tokenizer, [t * 3 for t in topical_corpus["text"]], 48, 2, "held-out")]
    messages = []
    rows = compare(tiny_llama, topical_corpus, spec, evaluations, "topics", progress=lambda f, m: messages.append((f, m)))
    assert len(rows) == spec.runs * 2 and set(rows["strategy"]) == {"random", "embedding-clusters"}
    assert rows["perplexity"].gt(0).all() and (rows["gap"] == rows["perplexity"] - rows["float_perplexity"]).all()
    assert messages[-1][0] == pytest.approx(1.0)
    table = summarize(rows)
    assert len(table) == 2 * 2 * 2 and (table["count"] == 2).all()
    first = table.iloc[0]
    subset = rows[(rows["scheme"] == first["scheme"]) & (rows["samples"] == first["samples"])
                  & (rows["strategy"] == first["strategy"])]
    assert first["mean"] == pytest.approx(subset["perplexity"].mean())
    assert first["std"] == pytest.approx(subset["perplexity"].std())
    assert table.groupby(["scheme", "samples"])["best"].sum().eq(1).all()
    best = table[table["best"]].iloc[0]
    rivals = table[(table["scheme"] == best["scheme"]) & (table["samples"] == best["samples"])]
    assert best["mean"] == rivals["mean"].min()


def test_comparison_spec_refuses_unknown_names():
    with pytest.raises(SpecError, match="cannot be compared"):
        ComparisonSpec(strategies=("packed",))
    with pytest.raises(SpecError, match="unknown"):
        ComparisonSpec(schemes=("W5",))
    assert Strategy.SELF_GENERATED.value in ComparisonSpec().strategies


def test_the_comparison_runs_the_floating_point_schemes(topical_corpus, tiny_llama):
    """FP8 static calibrates its input scales on each set; FP8 dynamic calibrates nothing, so every
    set gives it the same perplexity."""
    spec = ComparisonSpec(strategies=("random",), seeds=2, counts=(3,), length=48,
                          schemes=("FP8 W8A8 static", "FP8 W8A8 dynamic"))
    evaluations = [evaluation_windows(tiny_llama.tokenizer, [t * 3 for t in topical_corpus["text"]], 48, 2, "held-out")]
    rows = compare(tiny_llama, topical_corpus, spec, evaluations, "topics")
    assert set(rows["scheme"]) == {"FP8 W8A8 static", "FP8 W8A8 dynamic"} and rows["perplexity"].gt(0).all()
    dynamic = rows[rows["scheme"] == "FP8 W8A8 dynamic"]["perplexity"]
    assert dynamic.nunique() == 1
