"""A walk through every tab of the running dashboard in a browser, as a user clicks it: the browser
test takes it on the tiny model, bench/ui_walk.py on the builtin model with the defaults, timing
each step from click to result."""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Step:
    """Go to ``tab``, run ``prepare(page)``, click ``button``, wait until the tab's status shows ``done``."""

    name: str
    tab: str
    button: str
    done: str
    prepare: Callable | None = None
    screenshot: str = ""
    section: str = ""  # the screenshot shows the page from this heading down (a section at the tab's foot)


@dataclass
class Walk:
    page: object
    timeout_ms: int
    times: dict[str, float] = field(default_factory=dict)

    def status(self) -> str:
        """The visible tab's status line (the results, not the progress overlay)."""
        return self.page.evaluate(
            "() => [...document.querySelectorAll('.cs-status')].filter(e => e.offsetParent).map(e => e.innerText).join('\\n')")

    def below(self, heading: str) -> dict | None:
        """The page from ``heading`` (a visible section heading) to its end, as a screenshot clip; None: all of it."""
        if not heading:
            return None
        box = self.page.get_by_role("heading", name=heading, exact=True).locator("visible=true").bounding_box()
        top = box["y"] + self.page.evaluate("() => window.scrollY")  # the box is in the viewport, the clip in the page
        width, height = self.page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        return {"x": 0, "y": top - 8, "width": width, "height": height - top + 8}

    def run(self, step: Step, shots: Path | None = None) -> str:
        self.page.get_by_role("tab", name=step.tab, exact=True).click()
        if step.prepare is not None:
            step.prepare(self.page)
        # a refusal left from before (a cancelled run) stays on screen beside the new run's progress
        # until its result replaces it: then only the result counts as the end
        stale = "Not done:" in self.status()
        started = time.perf_counter()
        self.page.get_by_role("button", name=step.button, exact=True).click()
        self.page.wait_for_function(
            "([done, stale]) => [...document.querySelectorAll('.cs-status')].filter(e => e.offsetParent)"
            ".some(e => e.innerText.includes(done) || (!stale && e.innerText.includes('Not done:')))",
            arg=[step.done, stale], timeout=self.timeout_ms)
        self.times[step.name] = round(time.perf_counter() - started, 1)
        self.page.wait_for_timeout(1000)  # the progress overlay fades after the result: read the result
        status = self.status()
        if "Not done:" in status:
            raise AssertionError(f"{step.name}: {status}")
        if shots is not None and step.screenshot:
            self.page.wait_for_timeout(1500)  # figures finish drawing
            self.page.screenshot(path=str(shots / step.screenshot), full_page=True, clip=self.below(step.section))
        return status


def visible(page, label: str):
    """The control labelled ``label`` on the tab in view (tabs reuse labels such as 'Sample counts')."""
    return page.get_by_label(label, exact=True).locator("visible=true")


def choose(label: str, value: str) -> Callable:
    """Pick ``value`` in the dropdown labelled ``label``."""
    def pick(page):
        visible(page, label).click()
        page.get_by_role("option", name=value, exact=True).click()
    return pick


def first_run(page):
    """The Export tab's quantized model: the session's first quantization run."""
    visible(page, "Quantization run").click()
    page.get_by_role("option", name=re.compile(r"^1\. ")).click()


def mixed_precision(page):
    """W4 g128 GPTQ with its widths mixed at the default budget (4.5 bits per weight over 3, 4 and 8)."""
    choose("Scheme", "W4 g128 GPTQ")(page)
    page.get_by_text("Mixed precision", exact=True).click()  # the accordion opens
    visible(page, "Mix weight widths per layer").check()


def rotated(scheme: str) -> Callable:
    """``scheme`` with its inputs rotated where the calibration set predicts it helps."""
    def prepare(page):
        choose("Scheme", scheme)(page)
        mixed = visible(page, "Mix weight widths per layer")
        if mixed.count():  # left ticked by the mixed-precision step: rotations do not combine with it
            mixed.uncheck()
        page.get_by_text("Rotation", exact=True).click()  # the accordion opens
        visible(page, "where it helps").check()
    return prepare


def steps(scheme_first: str = "W4 g128 RTN", rotated_scheme: str = "MXFP4 W4A4",
          compare_strategies: tuple[str, ...] = ("random", "embedding-clusters")):
    """Every tab's main button with its defaults (the comparison as small as it gets: one seed, 4
    samples); the first quantization run is written as a checkpoint and reloaded at the end."""
    def small_comparison(page):
        visible(page, "Seeds").fill("1")
        visible(page, "Sample counts").fill("4")
        for strategy in ("random", "embedding-clusters", "length-stratified", "activation-clusters", "coverage",
                         "self-generated"):
            visible(page, strategy).set_checked(strategy in compare_strategies)
    return [
        # "M parameters": the final status, not the progress
        Step("load", "Model & Data", "Load model and corpus", "M parameters", screenshot="model-data.png"),
        Step("build", "Dataset", "Build calibration set", "padding at batch size", screenshot="dataset.png"),
        Step("statistics", "Activation ranges", "Collect statistics", "Collected ", screenshot="activations.png"),
        Step("kv cache", "Activation ranges", "Collect KV cache statistics", "attention layers", screenshot="kv-cache.png",
             section="KV cache"),
        Step("coverage", "Coverage", "Measure coverage", "maximum", screenshot="coverage.png"),
        Step("hessians", "Hessians", "Collect Hessians", "Collected Hessians", screenshot="hessians.png"),
        Step("sensitivity", "Sensitivity", "Run sweep", "Swept ", screenshot="sensitivity.png"),
        Step("quantize (RTN)", "Quantize", "Quantize and evaluate", ": perplexity", choose("Scheme", scheme_first)),
        Step("quantize (GPTQ)", "Quantize", "Quantize and evaluate", "GPTQ: perplexity", choose("Scheme", "W4 g128 GPTQ"),
             screenshot="quantize.png"),
        Step("quantize (AWQ)", "Quantize", "Quantize and evaluate", "AWQ searched", choose("Scheme", "W4 g128 AWQ"),
             screenshot="quantize-awq.png"),
        Step("quantize (mixed)", "Quantize", "Quantize and evaluate", "bits/weight (output error): perplexity",
             mixed_precision, screenshot="quantize-mixed.png"),
        Step("quantize (rotation)", "Quantize", "Quantize and evaluate", "inputs rotated", rotated(rotated_scheme),
             screenshot="quantize-rotation.png"),
        Step("compare", "Compare", "Run comparison", "Compared ", small_comparison, screenshot="compare.png"),
        Step("imatrix", "Imatrix", "Collect imatrix", "tensors over", screenshot="imatrix.png"),
        Step("export", "Export", "Prepare downloads", "Ready"),
        Step("export model", "Export", "Write quantized model", "reloaded (", first_run, screenshot="export.png"),
    ]
