"""Compare: strategies x seeds x sample counts, quantized and measured on held-out text."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import gradio as gr
import pandas as pd
import torch

from engine.errors import CalibscopeError
from engine.experiments import COMPARED, HELD_OUT, ComparisonRun, ComparisonSpec, EvaluationSpec, compare, summarize
from engine.figures import comparison_bars
from engine.progress import Progress, no_progress
from engine.quant import PRESETS
from engine.sampling import Strategy
from ui.cancel import run_and_cancel
from ui.context import AppContext
from ui.errors import shown_to_user
from ui.estimates import timed_step
from ui.parsing import parse_counts, whole
from ui.state import Session
from ui.tables import shown
from ui.widgets import result_plot, result_table, status_block
from ui.wiring import connect, on_field

# A CPU visitor should get an answer in minutes: two strategies, two seeds, one count, W4 GPTQ.
CPU_DEFAULTS = {"strategies": [Strategy.RANDOM.value, Strategy.EMBEDDING_CLUSTERS.value], "seeds": 2, "counts": "8",
                "length": 128, "schemes": ["W4 g128 GPTQ"], "windows": 4}
GPU_DEFAULTS = {"strategies": [s.value for s in COMPARED], "seeds": 5, "counts": "8, 32, 128", "length": 512,
                "schemes": ["W4 g128 GPTQ", "W8A8 static (p99.99)"], "windows": 32}


def defaults() -> dict:
    return GPU_DEFAULTS if torch.cuda.is_available() else CPU_DEFAULTS


@dataclass(frozen=True)
class CompareForm:
    """What the Compare widgets hold."""

    strategies: list[str] = field(default_factory=lambda: list(CPU_DEFAULTS["strategies"]))
    seeds: float = 2
    counts: str = "8"
    length: float = 128
    schemes: list[str] = field(default_factory=lambda: list(CPU_DEFAULTS["schemes"]))
    source: str = next(iter(HELD_OUT))
    windows: float = 4

    def spec(self) -> ComparisonSpec:
        if not self.strategies or not self.schemes:
            raise CalibscopeError("Choose at least one strategy and one scheme.")
        return ComparisonSpec(strategies=tuple(self.strategies), seeds=whole(self.seeds), counts=parse_counts(self.counts),
                              length=whole(self.length), schemes=tuple(self.schemes))


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def spread(mean: float, std: float) -> str:
    return f"{mean:.2f} ± " + ("n/a" if math.isnan(std) else f"{std:.2f}")


def status_line(table: pd.DataFrame, rows: pd.DataFrame, seconds: float) -> str:
    lines = []
    seeds = rows["seed"].nunique()
    for (scheme, samples), part in table.groupby(["scheme", "samples"]):
        best = part.loc[part["mean"].idxmin()]
        random = part[part["strategy"] == Strategy.RANDOM.value]
        versus = ""
        if len(random) and best["strategy"] != Strategy.RANDOM.value:
            r = random.iloc[0]
            overlap = seeds > 1 and best["mean"] + best["std"] >= r["mean"] - r["std"]
            versus = f" vs random {spread(r['mean'], r['std'])}" + (" (within one std: not a clear win)" if overlap else "")
        lines.append(f"{scheme}, n={samples}: best **{best['strategy']}** {spread(best['mean'], best['std'])}{versus}")
    if seeds == 1:
        lines.append("One seed gives no spread: with two or more, the ± says whether a difference is more than chance.")
    return (f"**Compared** {plural(rows['strategy'].nunique(), 'strategy').replace('strategys', 'strategies')} x "
            f"{plural(seeds, 'seed')} x {plural(rows['samples'].nunique(), 'count')} "
            f"({plural(len(rows), 'measurement')}) · {seconds:.0f} s\n- " + "\n- ".join(lines))


def check(form: CompareForm, context: AppContext) -> None:
    spec = on_field("strategies", form.spec)
    on_field("counts", lambda: context.limits.check_sampling(max(spec.counts), spec.length))
    on_field("seeds", lambda: context.limits.check_runs(spec.runs))
    on_field("windows", lambda: context.limits.check_sampling(whole(form.windows), spec.length))


def run_comparison(form: CompareForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    corpus = session.require_corpus()
    check(form, context)
    spec = form.spec()
    loaded = context.model(session)
    evaluation = context.evaluations.windows(loaded, form.source, spec.length, whole(form.windows))
    own = sum(PRESETS[scheme].own_pass_forwards for scheme in spec.schemes)  # AWQ searches on each set
    units = spec.runs * ((1 + own) * sum(spec.counts) / len(spec.counts) * spec.length + evaluation.tokens * len(spec.schemes))
    with timed_step(context.times, loaded, "compare", units, progress):
        rows = compare(loaded, corpus, spec, [evaluation], corpus_label=session.corpus_spec.label, progress=progress,
                       reference=lambda e: context.evaluations.reference(loaded, e))
    table = summarize(rows)
    seconds = float(rows.drop_duplicates(["strategy", "seed", "samples"])["seconds"].sum())
    figure = comparison_bars(table, spec.schemes[0], evaluation.name, float(rows["float_perplexity"].iloc[0]))
    return {"status": status_line(table, rows, seconds), "bars": figure,
            "table": shown(table.drop(columns=["calibration", "evaluation"]),
                           {"mean": ".3f", "std": ".3f", "kld": ".4f", "kld_std": ".4f", "top1": ".1%"}, flags=("best",),
                           headers={"count": "seeds", "mean": "perplexity", "kld": "KL divergence", "kld_std": "KLD std",
                                    "top1": "same top token"}),
            "scheme": gr.update(choices=list(spec.schemes), value=spec.schemes[0]),
            "session": replace(session, comparison=rows,
                               comparison_run=ComparisonRun(spec, EvaluationSpec(form.source, spec.length, whole(form.windows))))}


@shown_to_user
def show_scheme(scheme: str, session: Session | None):
    rows = (session or Session()).require("comparison")
    part = rows[rows["scheme"] == scheme]
    return comparison_bars(summarize(rows), scheme, part["evaluation"].iloc[0], float(part["float_perplexity"].iloc[0]))


def build_tab(session: gr.State, context: AppContext) -> None:
    start = defaults()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("Does the choice of samples matter? Each strategy builds sets from the loaded corpus with "
                        "several seeds and sizes; each set is quantized and measured on held-out text.")
            strategies = gr.CheckboxGroup([s.value for s in COMPARED], value=start["strategies"], label="Strategies")
            with gr.Row():
                seeds = gr.Number(start["seeds"], label="Seeds", precision=0, minimum=1)
                length = gr.Number(start["length"], label="Length (tokens)", precision=0, minimum=2)
            counts = gr.Textbox(start["counts"], label="Sample counts")
            schemes = gr.CheckboxGroup(list(PRESETS), value=start["schemes"], label="Schemes")
            with gr.Row():
                source = gr.Dropdown(list(HELD_OUT), value=next(iter(HELD_OUT)), label="Held-out text")
                windows = gr.Number(start["windows"], label="Windows", precision=0, minimum=1)
            run, cancel = run_and_cancel("Run comparison")
        with gr.Column(scale=3):
            status = status_block(session, "Every cell is built from the loaded corpus, collected, quantized and evaluated.")
            scheme = gr.Dropdown([], label="Scheme shown", interactive=True)
            bars = result_plot()
    table = result_table("Perplexity over seeds (mean, std; best per scheme and count marked)")
    widgets = {"strategies": strategies, "seeds": seeds, "counts": counts, "length": length, "schemes": schemes,
               "source": source, "windows": windows}
    outputs = {"status": status, "bars": bars, "table": table, "scheme": scheme, "session": session}
    connect(run.click, run_comparison, CompareForm, widgets, session, outputs, context, api_name="compare",
            status=status, cancel=cancel, check=check)
    scheme.input(show_scheme, [scheme, session], bars)
