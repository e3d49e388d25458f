"""The dashboard in a real headless Chromium: what a user sees after a click."""
import zipfile
from pathlib import Path

import datasets
import pytest

from tests.browser import chromium_page, served_app
from ui.limits import Limits

pytestmark = pytest.mark.browser


def test_model_and_data_tab_loads_a_model_and_corpus_in_the_browser(tmp_path):
    with served_app(limits=Limits(), default_model="tiny-random-llama") as url, chromium_page() as page:
        page.goto(url)
        page.get_by_role("button", name="Load model and corpus").click()
        page.wait_for_function("() => document.body.innerText.includes('LlamaForCausalLM')", timeout=60_000)
        text = page.inner_text("body")
        assert "LlamaForCausalLM" in text and "builtin:mixed[train]" in text
        assert "python-docs:" in text  # the preview table shows real documents
        assert "Traceback" not in text
        page.screenshot(path=str(tmp_path / "model-data.png"), full_page=True)

        page.get_by_role("tab", name="Dataset").click()
        page.get_by_role("button", name="Build calibration set").click()
        page.wait_for_function("() => document.body.innerText.includes('padding at batch size')", timeout=60_000)
        plots = page.locator(".js-plotly-plot")
        plots.first.wait_for(timeout=10_000)
        assert plots.count() == 2
        traces = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(p => p.data.length)")
        assert traces == [2, 3]  # length histogram (corpus, samples) and bucket bars (available, asked, selected)
        assert "257–512" in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "dataset.png"), full_page=True)

        page.get_by_role("tab", name="Activation ranges").click()
        page.get_by_role("button", name="Collect statistics").click()
        page.wait_for_function("() => document.body.innerText.includes('Collected 14 tensors')", timeout=60_000)
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].filter(p => p.offsetParent).length >= 2",
                               timeout=10_000)
        visible = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                ".filter(p => p.offsetParent).map(p => p.data.length)")
        assert visible[-2:] == [7, 5]  # ranges (6 lines + threshold); the top layer's channels (bar, 3 percentiles, threshold)
        assert page.locator("mark").count() == 1  # the token that set the maximum, highlighted

        page.get_by_role("tab", name="Hessians").click()
        page.get_by_role("button", name="Collect Hessians").click()
        page.wait_for_function("() => document.body.innerText.includes('Collected Hessians of 14 layers')", timeout=60_000)
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')]"
                               ".filter(p => p.offsetParent && p.data).length >= 3",
                               timeout=30_000)  # the status line can arrive before the figures are drawn
        visible = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                ".filter(p => p.offsetParent && p.data).map(p => p.data[0].type)")
        assert visible[-3:] == ["scatter", "scatter", "heatmap"]  # depth, spectrum, diagonals

        page.get_by_role("tab", name="Export").click()
        page.get_by_role("button", name="Prepare downloads").click()
        page.wait_for_function("() => document.body.innerText.includes('Ready')", timeout=60_000)
        with page.expect_download() as download:
            page.locator("a[download=\"calibration-disk.zip\"]").click()
        archive = tmp_path / "calibration.zip"
        download.value.save_as(archive)
        with zipfile.ZipFile(archive) as opened:
            opened.extractall(tmp_path / "unzipped")
        reloaded = datasets.load_from_disk(str(tmp_path / "unzipped" / "calibration-disk" / "dataset"))
        assert len(reloaded) == 32 and reloaded[0]["input_ids"][0] == 1  # every sample starts with BOS


def test_bad_input_shows_a_message_and_the_app_stays_up():
    with served_app(limits=Limits(), default_model="builtin:does-not-exist") as url, chromium_page() as page:
        page.goto(url)
        page.get_by_role("button", name="Load model and corpus").click()
        page.wait_for_function("() => document.body.innerText.includes('Unknown builtin model')", timeout=30_000)
        assert "Traceback" not in page.inner_text("body")
        # still responsive: a good model chosen after the failure loads
        model = page.get_by_label("Model", exact=True)
        model.fill("tiny-random-llama")
        model.press("Enter")
        page.get_by_role("button", name="Load model and corpus").click()
        page.wait_for_function("() => document.body.innerText.includes('tiny-random-llama') && "
                               "document.body.innerText.includes('M parameters')", timeout=60_000)
        assert "Unknown builtin model" not in page.inner_text("body")


def test_the_html_report_draws_every_figure_offline(tmp_path):
    from tests.ui_helpers import CONTEXT, Recorder
    from ui.tabs.export import ExportForm, prepare_downloads

    session = _export_session()
    files = prepare_downloads(ExportForm("jsonl"), session, CONTEXT, Recorder())["files"]
    report = next(f for f in files if f.endswith("report.html"))
    expected = Path(report).read_text(encoding="utf-8").count('class="cs-figure"')
    with chromium_page() as page:
        page.goto(f"file://{report}")
        page.wait_for_function("() => document.body.dataset.figuresDrawn !== undefined", timeout=30_000)
        drawn = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                              ".filter(p => p.data && p.data.length).length")
    assert expected >= 5 and drawn == expected


def _export_session():
    from tests.test_ui_activations import FORM as STATS_FORM
    from tests.ui_helpers import CONTEXT, Recorder, build, load
    from ui.tabs.activations import collect_statistics
    from ui.tabs.hessians import HessianForm, compute_hessians

    session = build(load(builtin_name="python-docs")["session"], nsamples=6, edges="64, 128")["session"]
    session = collect_statistics(STATS_FORM, session, CONTEXT, Recorder())["session"]
    return compute_hessians(HessianForm(batch_size=4), session, CONTEXT, Recorder())["session"]


def test_a_walk_through_every_tab_with_every_export_format_and_a_cancel(tmp_path):
    from tests.walk import Walk, steps, visible

    with served_app(limits=Limits(), default_model="tiny-random-llama") as url, chromium_page() as page:
        page.goto(url)
        walk = Walk(page, timeout_ms=120_000)
        # the tiny model's 37-wide MLP takes no groups of 128 in a checkpoint: its first run is per channel;
        # nor MXFP4's blocks of 32: its rotated run is W4 RTN
        for step in steps(scheme_first="W8A8 static (min/max)", rotated_scheme="W4 g128 RTN"):
            status = walk.run(step)
        assert set(walk.times) == {step.name for step in steps()}
        assert "Wrote compressed-tensors checkpoint" in status and "equal within 0.1%" in status  # written, reloaded
        # the walk exported the default (disk)
        for fmt in ("parquet", "jsonl", "torch list of [1, n] tensors (optimum's GPTQQuantizer)"):
            visible(page, fmt).check()
            page.get_by_role("button", name="Prepare downloads").click()
            page.wait_for_function(f"() => document.body.innerText.includes({f'samples, {fmt})'!r})", timeout=60_000)
        page.get_by_role("button", name="Prepare downloads").click()  # nothing changed: nothing is written again
        page.wait_for_function(  # the previous answer also names unchanged files: wait for one that writes nothing
            "() => [...document.querySelectorAll('.cs-status')].filter(e => e.offsetParent).some(e =>"
            " e.innerText.includes('unchanged since the last click') && !e.innerText.includes('written now'))",
            timeout=60_000)

        page.get_by_role("tab", name="Sensitivity", exact=True).click()  # a long step, cancelled
        visible(page, "Sample counts").fill("1, 2, 4, 8, 16, 32")
        visible(page, "Batch size").fill("1")  # 32 batches: long enough to cancel when Cancel is clicked at once
        page.get_by_role("button", name="Run sweep").click()
        page.get_by_role("button", name="Cancel").locator("visible=true").click()  # as soon as it can be
        page.wait_for_function("() => document.body.innerText.includes('Cancelled')", timeout=30_000)
        # and the app goes on: the same sweep runs to the end
        walk.run(next(step for step in steps() if step.name == "sensitivity"))
        assert "Traceback" not in page.inner_text("body")
