"""The Dataset tab's handler and spec parsing, called as functions."""
import gradio as gr
import pytest

from engine import SpecError
from engine.sampling import (
    GptqWindowsSpec,
    LengthStratifiedSpec,
    PackedSpec,
    RandomSpec,
)
from tests.test_ui import FakeProgress, _load
from ui.limits import Limits
from ui.state import Session
from ui.tabs.dataset import (
    build_calibration_set,
    parse_edges,
    sampling_spec_from_widgets,
)


def widgets(strategy="length-stratified", nsamples=24, length=256, edges="16, 64, 256", allocation="equal", mode="joined",
            seed=0, add_bos=True, chat=True):
    return [strategy, nsamples, length, edges, allocation, mode, seed, add_bos, chat]


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("random", RandomSpec(nsamples=24, max_length=256)),
        ("length-stratified", LengthStratifiedSpec(nsamples=24, edges=(16, 64, 256))),
        ("gptq-windows", GptqWindowsSpec(nsamples=24, seqlen=256)),
        ("packed", PackedSpec(nsamples=24, seqlen=256)),
    ],
)
def test_widgets_become_the_right_spec(strategy, expected):
    assert sampling_spec_from_widgets(*widgets(strategy=strategy)) == expected


def test_bad_edges_and_counts_are_explained():
    assert parse_edges("64; 128 ,256") == (64, 128, 256)
    with pytest.raises(SpecError, match="separated by commas"):
        parse_edges("64, lots")
    with pytest.raises(SpecError, match="increasing order"):
        sampling_spec_from_widgets(*widgets(edges="256, 64"))
    with pytest.raises(SpecError, match="nsamples=0"):
        sampling_spec_from_widgets(*widgets(nsamples=0))


@pytest.fixture(scope="module")
def loaded_session():
    (_, _, _, _, session), _ = _load(builtin="python-docs")
    return session


def _build(session, limits=Limits(), **kwargs):
    return build_calibration_set(*widgets(**kwargs), session, limits=limits, progress=FakeProgress())


def test_build_needs_a_loaded_corpus_first():
    with pytest.raises(gr.Error, match="Model & Data tab first"):
        _build(Session())


def test_build_shows_status_figures_tables_and_keeps_the_set(loaded_session):
    status, histogram, buckets_plot, summary, bucket_table, preview, session = _build(loaded_session)
    assert status.startswith("**Built** 24 samples") and "padding" in status
    assert [t.name.split(" (")[0] for t in histogram.data] == ["corpus documents", "calibration samples"]
    assert buckets_plot["visible"] and [t.name for t in buckets_plot["value"].data] == ["available", "asked", "selected"]
    assert bucket_table["value"]["selected"].sum() == 24
    assert dict(summary.values.tolist())["Starts with"] == "<bos>"
    assert len(preview) == 20 and preview["text"].str.startswith("<bos>").all()
    assert len(session.calibration) == 24 and session.corpus is loaded_session.corpus


def test_windows_hide_the_bucket_views(loaded_session):
    _, _, buckets_plot, _, bucket_table, _, session = _build(loaded_session, strategy="gptq-windows")
    assert not buckets_plot["visible"] and not bucket_table["visible"]
    assert all(len(s) == 256 for s in session.calibration.sequences)


def test_more_samples_than_the_corpus_says_so(loaded_session):
    status, *_ = _build(loaded_session, strategy="random", nsamples=5000)
    assert "(asked 5,000)" in status and "returning" in status


def test_shared_space_caps_samples_and_length(loaded_session):
    with pytest.raises(gr.Error, match="1,000 samples is more than the 256 allowed on this shared Space"):
        _build(loaded_session, limits=Limits.shared_space(), nsamples=1000)
    with pytest.raises(gr.Error, match="4,096 tokens"):
        _build(loaded_session, limits=Limits.shared_space(), strategy="packed", length=4096)
