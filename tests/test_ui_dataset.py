"""The Dataset tab's handler and form, called as functions."""
import pytest

from engine import SpecError
from engine.errors import CalibscopeError
from engine.sampling import GptqWindowsSpec, LengthStratifiedSpec, PackedSpec, RandomSpec, Strategy
from tests.ui_helpers import CONTEXT, build, load
from ui.context import AppContext
from ui.limits import Limits
from ui.parsing import parse_edges
from ui.state import Session
from ui.tabs.dataset import OPTION_WIDGETS, DatasetForm, strategy_controls

FORM = DatasetForm(nsamples=24, length=256, edges="16, 64, 256")


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("random", RandomSpec(nsamples=24, length=256, min_tokens=16)),
        ("length-stratified", LengthStratifiedSpec(nsamples=24, edges=(16, 64, 256), min_tokens=16)),
        ("gptq-windows", GptqWindowsSpec(nsamples=24, length=256)),
        ("packed", PackedSpec(nsamples=24, length=256)),
    ],
)
def test_widgets_become_the_right_spec(strategy, expected):
    assert DatasetForm(**{**FORM.__dict__, "strategy": strategy}).spec() == expected


def test_bad_edges_and_counts_are_explained():
    assert parse_edges("64; 128 ,256") == (64, 128, 256)
    with pytest.raises(SpecError, match="separated by commas"):
        parse_edges("64, lots")
    with pytest.raises(SpecError, match="increasing order"):
        DatasetForm(edges="256, 64").spec()
    with pytest.raises(SpecError, match="nsamples=0"):
        DatasetForm(nsamples=0).spec()


EXPECTED_CONTROLS = {Strategy.RANDOM: {"min_tokens"}, Strategy.LENGTH_STRATIFIED: {"edges", "allocation", "min_tokens"},
                     Strategy.GPTQ_WINDOWS: {"mode", "recipe"}, Strategy.EMBEDDING_CLUSTERS: {"min_tokens"},
                     Strategy.ACTIVATION_CLUSTERS: {"min_tokens"}, Strategy.COVERAGE: {"min_tokens"}}


def test_each_strategy_shows_its_own_controls():
    for strategy in Strategy:
        length, *options, summary = strategy_controls(strategy.value)
        assert length["visible"] == (strategy is not Strategy.LENGTH_STRATIFIED)
        shown = {name for name, update in zip(OPTION_WIDGETS, options) if update["visible"]}
        assert shown == EXPECTED_CONTROLS.get(strategy, set()), strategy
        assert summary["value"]
    assert strategy_controls("packed")[0]["label"] == "Sequence length (tokens)"
    assert strategy_controls("random")[0]["label"] == "Max length (tokens)"


@pytest.fixture(scope="module")
def loaded_session():
    return load(builtin_name="python-docs")["session"]


def test_build_needs_a_loaded_corpus_first():
    with pytest.raises(CalibscopeError, match="Model & Data tab first"):
        build(Session())


def test_no_default_sample_is_shorter_than_the_minimum(loaded_session):
    calibration = build(loaded_session, nsamples=24)["session"].calibration
    assert calibration.lengths.min() >= 16
    assert build(loaded_session, nsamples=24, min_tokens=1)["session"].calibration.lengths.min() < 16


def test_build_shows_status_figures_tables_and_keeps_the_set(loaded_session):
    result = build(loaded_session)
    assert result["status"].startswith("**Built** 24 samples") and "padding" in result["status"]
    assert [t.name.split(" (")[0] for t in result["histogram"].data] == ["corpus documents", "calibration samples"]
    buckets_plot = result["second_plot"]
    assert buckets_plot["visible"] and [t.name for t in buckets_plot["value"].data] == ["available", "asked", "selected"]
    assert result["bucket_table"]["value"]["selected"].sum() == 24
    assert dict(result["summary"].values.tolist())["Starts with"] == "<bos>"
    preview, session = result["preview"], result["session"]
    assert len(preview) == 20 and preview["text"].str.startswith("<bos>").all()
    assert len(session.calibration) == 24 and session.corpus is loaded_session.corpus


def test_windows_hide_the_bucket_views(loaded_session):
    result = build(loaded_session, strategy="gptq-windows")
    assert not result["second_plot"]["visible"] and not result["bucket_table"]["visible"]
    assert all(len(s) == 256 for s in result["session"].calibration.sequences)


def test_more_samples_than_the_corpus_says_so(loaded_session):
    status = build(loaded_session, strategy="random", nsamples=5000)["status"]
    assert "(asked 5,000)" in status and "returning" in status


def test_shared_space_caps_samples_and_length(loaded_session):
    shared = AppContext(limits=Limits.shared_space(), models=CONTEXT.models)
    with pytest.raises(CalibscopeError, match="1,000 samples is more than the 256 allowed on this shared Space"):
        build(loaded_session, context=shared, nsamples=1000)
    with pytest.raises(CalibscopeError, match="4,096 tokens"):
        build(loaded_session, context=shared, strategy="packed", length=4096)

