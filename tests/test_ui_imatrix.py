"""The Imatrix tab's handlers, called as functions, and its figure builders on their content."""
import numpy as np
import pytest

from engine.errors import CalibscopeError
from engine.figures.imatrix import channel_importance, comparison_figure, concentration_heatmap, expert_counts, top_channels
from engine.imatrix import Imatrix, ImatrixEntry, read_imatrix
from engine.imatrix.compare import compare_imatrices
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.state import Session
from ui.tabs.imatrix import TEXT_FILE, CollectForm, CompareForm, LoadForm, collect, compare, load_file, show_tensor, switch_matrix


@pytest.fixture(scope="module")
def built_session():
    session = load(builtin_name="python-docs")["session"]
    return build(session, nsamples=6, edges="64, 128")["session"]


def test_collecting_needs_a_model_and_a_set():
    with pytest.raises(CalibscopeError):
        collect(CollectForm(), Session(), CONTEXT, Recorder())


def test_collect_load_and_compare_fill_every_view(built_session, wikitext_path, tmp_path):
    first = collect(CollectForm(batch_size=4), built_session, CONTEXT, Recorder())
    session = first["session"]
    assert first["status"].startswith("**#1 length-stratified, 6 samples") and "14 tensors over" in first["status"]
    assert first["heatmap"].data[0].type == "heatmap" and first["experts"] is None
    label = next(iter(session.imatrices))
    assert first["tensor"]["value"] in session.imatrices[label].entries
    assert [p.rsplit(".", 1)[1] for p in first["downloads"]] == ["gguf", "dat"]
    assert read_imatrix(first["downloads"][0]).names() == session.imatrices[label].names()

    excerpt = tmp_path / "excerpt.txt"
    excerpt.write_bytes(wikitext_path.read_bytes()[:6_000])
    second = collect(CollectForm(source=TEXT_FILE, text_file=str(excerpt), n_ctx=128, chunks=4), session, CONTEXT, Recorder())
    session = second["session"]
    assert "#2 excerpt.txt, 4 chunks of 128" in second["status"] and "over 512 tokens" in second["status"]
    assert second["first"]["value"].startswith("#2") and second["second"]["value"].startswith("#1")

    loaded = load_file(LoadForm(imatrix_file=second["downloads"][1], chunk_size=128), session, CONTEXT, Recorder())
    session = loaded["session"]
    labels = list(session.imatrices)
    assert len(labels) == 3 and labels[2].startswith("#3 file imatrix.dat")

    same = compare(CompareForm(labels[1], labels[2]), session, CONTEXT, Recorder())
    assert "14 tensors in common" in same["status"] and "ranking ρ ≥ 1.000" in same["status"]
    assert next(iter(same["comparison_table"]["p99 diff"])).endswith("%")
    different = compare(CompareForm(labels[0], labels[1]), session, CONTEXT, Recorder())
    assert "Token counts differ" in different["status"]

    figure, table = show_tensor("blk.1.ffn_down.weight", labels[0], labels[1], session)
    assert [trace.name for trace in figure.data] == [labels[1], labels[0], "top 10"] and len(table) == 10
    heatmap, *_ = switch_matrix(labels[2], session)
    assert heatmap.data[0].type == "heatmap"


def test_bad_input_says_what_to_do(built_session):
    with pytest.raises(CalibscopeError, match="Choose a text file"):
        collect(CollectForm(source=TEXT_FILE), built_session, CONTEXT, Recorder())
    with pytest.raises(CalibscopeError, match="Choose an imatrix file"):
        load_file(LoadForm(), built_session, CONTEXT, Recorder())
    with pytest.raises(CalibscopeError, match="needs two matrices"):
        compare(CompareForm("a", "b"), built_session, CONTEXT, Recorder())


def matrix() -> Imatrix:
    sums = np.ones((1, 6))
    sums[0, 4] = 1000.0
    down = np.ones((1, 8))
    down[0, 2] = 50.0
    return Imatrix({"blk.0.attn_q.weight": ImatrixEntry(sums, [10]), "blk.1.attn_q.weight": ImatrixEntry(sums * 2, [10]),
                    "blk.0.ffn_down.weight": ImatrixEntry(down, [10]), "blk.1.ffn_down.weight": ImatrixEntry(down, [10])})


def test_concentration_heatmap_shows_log_max_over_median_and_the_top_channel():
    figure = concentration_heatmap(matrix())
    trace = figure.data[0]
    assert list(trace.x) == ["attn_q", "ffn_down"] and list(trace.y) == ["blk.0", "blk.1"]
    np.testing.assert_allclose(np.asarray(trace.z), [[3.0, np.log10(50)], [3.0, np.log10(50)]])
    assert np.asarray(trace.customdata).tolist() == [[4, 2], [4, 2]]


def test_channel_importance_marks_the_top_channels_and_draws_the_compared_matrix():
    base = matrix()
    figure = channel_importance(base, "blk.0.attn_q.weight", top=2, compared=base, labels=("mine", "theirs"))
    assert [trace.name for trace in figure.data] == ["theirs", "mine", "top 2"]
    np.testing.assert_allclose(figure.data[1].y, base.entries["blk.0.attn_q.weight"].importance()[0])
    assert next(iter(figure.data[2].x)) == 4 and figure.layout.yaxis.type == "log"
    assert top_channels(base, "blk.0.attn_q.weight", 1)["× median"].tolist() == [1000.0]


def test_expert_counts_mark_experts_under_the_threshold():
    assert expert_counts(matrix(), 10) is None
    moe = Imatrix({"blk.0.ffn_up_exps.weight": ImatrixEntry(np.ones((4, 3)), [100, 0, 5, 90]),
                   "blk.1.ffn_up_exps.weight": ImatrixEntry(np.ones((4, 3)), [60, 60, 60, 60])})
    figure = expert_counts(moe, 10)
    assert np.asarray(figure.data[0].z).tolist() == [[100, 0, 5, 90], [60, 60, 60, 60]]
    assert list(figure.data[1].x) == [1, 2] and "2 of 8 experts under 10" in figure.layout.title.text


def test_comparison_figure_plots_each_tensors_p99_difference_and_ranking():
    base = matrix()
    scaled = Imatrix({name: ImatrixEntry(e.sums * np.linspace(1, 1.1, e.channels), e.counts) for name, e in base.entries.items()})
    table = compare_imatrices(scaled, base)
    figure = comparison_figure(table, "a", "b")
    assert list(figure.data[0].x) == ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_q.weight",
                                      "blk.1.ffn_down.weight"]
    np.testing.assert_allclose(figure.data[0].y, table.set_index("tensor").loc[list(figure.data[0].x), "p99_relative_difference"])
    assert max(figure.data[0].y) <= 0.1 + 1e-9 and min(figure.data[1].y) > 0.5
