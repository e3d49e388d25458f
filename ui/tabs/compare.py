"""Compare: strategies x seeds x sample counts, quantized and measured on held-out text."""
from __future__ import annotations

from dataclasses import replace

import gradio as gr
import pandas as pd
import torch

from engine.compare import COMPARED, ComparisonSpec, compare, summarize
from engine.figures.selection import comparison_bars
from engine.quant import PRESETS
from engine.sampling import Strategy
from ui.cancel import cancel_button, cancellable, wire_cancel
from ui.errors import shown_to_user, with_limits
from ui.limits import Limits
from ui.state import MODELS, Session
from ui.tabs.quantize import HELD_OUT, evaluation_set
from ui.tabs.sensitivity import parse_counts

# A CPU visitor should get an answer in minutes: two strategies, two seeds, one count, W4 GPTQ.
CPU_DEFAULTS = {"strategies": [Strategy.RANDOM.value, Strategy.EMBEDDING_CLUSTERS.value], "seeds": 2, "counts": "8",
                "length": 128, "schemes": ["W4 g128 GPTQ"], "windows": 4}
GPU_DEFAULTS = {"strategies": [s.value for s in COMPARED], "seeds": 5, "counts": "8, 32, 128", "length": 512,
                "schemes": ["W4 g128 GPTQ", "W8A8 static (p99.99)"], "windows": 32}


def defaults() -> dict:
    return GPU_DEFAULTS if torch.cuda.is_available() else CPU_DEFAULTS


def status_line(table: pd.DataFrame, rows: pd.DataFrame, seconds: float) -> str:
    lines = []
    for (scheme, samples), part in table.groupby(["scheme", "samples"]):
        best = part.loc[part["mean"].idxmin()]
        random = part[part["strategy"] == Strategy.RANDOM.value]
        versus = ""
        if len(random) and best["strategy"] != Strategy.RANDOM.value:
            r = random.iloc[0]
            overlap = best["mean"] + best["std"] >= r["mean"] - r["std"]
            versus = f" vs random {r['mean']:.2f} ± {r['std']:.2f}" + (" (within one std: not a clear win)" if overlap else "")
        lines.append(f"{scheme}, n={samples}: best **{best['strategy']}** {best['mean']:.2f} ± {best['std']:.2f}{versus}")
    return (f"**Compared** {rows['strategy'].nunique()} strategies x {rows['seed'].nunique()} seeds x "
            f"{rows['samples'].nunique()} counts ({len(rows)} measurements) · {seconds:.0f} s\n- " + "\n- ".join(lines))


@shown_to_user
def run_comparison(strategies, seeds, counts, length, schemes, source, windows, session: Session | None,
                   progress=gr.Progress(), request: gr.Request = None, *, limits: Limits = Limits()):
    session = session or Session()
    corpus = session.require_corpus()
    spec = ComparisonSpec(strategies=tuple(strategies or ()), seeds=int(seeds or 0), counts=parse_counts(counts),
                          length=int(length or 0), schemes=tuple(schemes or ()))
    if not spec.strategies or not spec.schemes:
        raise gr.Error("Choose at least one strategy and one scheme.")
    limits.check_sampling(max(spec.counts), spec.length)
    limits.check_runs(spec.runs)
    evaluation = evaluation_set(session, source, None, spec.length, int(windows or 0), limits)
    loaded = MODELS.get(session.model_spec)
    rows = compare(loaded, corpus, spec, [evaluation], corpus_label=session.corpus_spec.label,
                   progress=cancellable(progress, request))
    table = summarize(rows)
    seconds = float(rows.drop_duplicates(["strategy", "seed", "samples"])["seconds"].sum())
    figure = comparison_bars(table, spec.schemes[0], evaluation.name, float(rows["float_perplexity"].iloc[0]))
    shown = table.drop(columns=["calibration", "evaluation"]).round(3)
    return (status_line(table, rows, seconds), figure, shown, gr.update(choices=list(spec.schemes), value=spec.schemes[0]),
            replace(session, comparison=rows))


@shown_to_user
def show_scheme(scheme: str, session: Session | None):
    rows = (session or Session()).require_comparison()
    table = summarize(rows)
    part = rows[rows["scheme"] == scheme]
    return comparison_bars(table, scheme, part["evaluation"].iloc[0], float(part["float_perplexity"].iloc[0]))


def build_tab(session: gr.State, limits: Limits) -> None:
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
            with gr.Row():
                run = gr.Button("Run comparison", variant="primary", scale=3)
                cancel = cancel_button()
        with gr.Column(scale=3):
            status = gr.Markdown("Load a model and a corpus, then compare strategies. Every cell is built, "
                                 "collected, quantized and evaluated: expect minutes on a CPU.", elem_classes="cs-status")
            scheme = gr.Dropdown([], label="Scheme shown", interactive=True)
            bars = gr.Plot(show_label=False)
    table = gr.Dataframe(label="Perplexity over seeds (mean, std; best per scheme and count marked)", interactive=False)
    event = run.click(with_limits(run_comparison, limits), [strategies, seeds, counts, length, schemes, source, windows, session],
                      [status, bars, table, scheme, session], show_progress_on=[status], concurrency_id="heavy",
                      api_name="compare")
    wire_cancel(cancel, event, status)
    scheme.input(show_scheme, [scheme, session], bars)
