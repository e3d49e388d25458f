"""Coverage: how many of the model's outlier channels the calibration set excites, which samples
do it, and for MoE models how many tokens each expert receives and what its Hessian looks like."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from engine.errors import CalibscopeError
from engine.figures import expert_token_heatmap, outlier_coverage
from engine.models import block_of, find_experts
from engine.progress import Progress, no_progress, scaled
from engine.sampling import RandomSpec, Target, build, coverage_table, outlier_targets, score_sequences
from engine.stats import ExpertReport, ExpertSpec, collect_expert_stats
from ui.cancel import run_and_cancel
from ui.context import AppContext
from ui.estimates import timed_step
from ui.parsing import whole
from ui.state import Session
from ui.tables import shown
from ui.widgets import result_plot, result_table, status_block
from ui.wiring import connect

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "pool": (
        "random corpus documents whose maxima, with the set's, define the outliers (more: a better "
        "estimate, slower)"
    ),
    "under": "0: the expert's input channels (fewer tokens: a rank-deficient Hessian)",
}


@dataclass(frozen=True)
class CoverageForm:
    pool: float = 16
    fraction: float = 0.9
    outlier_ratio: float = 6.0
    under_calibrated: float = 0


def expert_views(report: ExpertReport, threshold: int) -> tuple:
    counts = report.counts()
    figure = expert_token_heatmap(counts.to_numpy(), [name.rsplit(".", 2)[0] for name in counts.index], threshold)
    table = shown(report.hessians, {"condition_number": ".3g", "min_damping": ".3g"},
                  headers={"condition_number": "condition", "min_damping": "min damping", "warning": "finding"})
    return figure, table


def measure(form: CoverageForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    loaded = context.model(session)
    calibration, corpus = session.require_calibration(), session.require_corpus()
    pool_size, threshold = whole(form.pool), whole(form.under_calibrated)
    if not 0 < form.fraction <= 1 or form.outlier_ratio <= 1:
        raise CalibscopeError("The reach must be in (0, 1] (0.9: 90% of the reference max) and the outlier ratio above 1.")
    context.limits.check_sampling(pool_size, int(calibration.lengths.max()))
    pool = build(corpus, loaded.tokenizer, RandomSpec(nsamples=pool_size, length=int(calibration.lengths.max()), seed=0),
                 max_positions=loaded.info.max_positions, model=loaded)
    with timed_step(context.times, loaded, "coverage", int(calibration.lengths.sum() + pool.lengths.sum()), progress):
        mine = score_sequences(loaded, calibration.sequences, calibration.pad_token_id, progress=scaled(progress, 0.0, 0.3))
        reference = mine.joined(score_sequences(loaded, pool.sequences, pool.pad_token_id, progress=scaled(progress, 0.3, 0.7)))
        targets = outlier_targets(reference, form.outlier_ratio)  # the set and the pool: the corpus's maxima, estimated
        names = [f"#{i} {p.source}" for i, p in enumerate(calibration.provenance)]
        table = coverage_table(mine, targets, form.fraction, names)
        experts = collect_expert_stats(loaded, calibration, ExpertSpec(under_calibrated=threshold),
                                       scaled(progress, 0.7, 1.0)) if find_experts(loaded.model) else None
    channels = table[table["kind"] == Target.CHANNEL.value]
    total, reached = int(channels["targets"].sum()), int(channels["covered"].sum())
    status = (f"No channel's maximum is above {form.outlier_ratio:g}x its input's median: this model has no outlier channel to "
              f"cover at that ratio." if not total else
              f"**{reached:,} of {total:,} outlier channels** ({reached / max(total, 1):.0%}) reach {form.fraction:.0%} of their "
              f"maximum over this set and {len(pool):,} random corpus documents in the set's {len(calibration):,} samples "
              f"(an outlier: max above {form.outlier_ratio:g}x its input's median channel).")
    worst = (channels.assign(missed=channels["targets"] - channels["covered"]).sort_values("missed").iloc[-1]
             if len(channels) else None)
    if worst is not None and worst["missed"] > 0:
        status += f" Most missed: **{worst['key']}** ({int(worst['missed'])} of {int(worst['targets'])})."
    result = {"coverage": outlier_coverage(table, block_of), "table": shown(
        channels.drop(columns=["kind"]), {"share": ".0%"}, headers={"key": "input", "targets": "outliers", "covered": "reached",
                                                                    "responsible": "samples reaching the most"}),
        "experts": gr.update(visible=False), "expert_table": gr.update(visible=False)}
    if experts is not None:
        limit = threshold or int(loaded.model.config.hidden_size)
        figure, hessians = expert_views(experts, limit)
        unused, under = experts.unused(), experts.under_calibrated(limit)
        status += (f"\n- MoE: **{len(unused):,} experts received no token** and {len(under):,} fewer than {limit:,} "
                   f"(their Hessians are rank-deficient): add data, or calibrate with every expert routed." if len(under)
                   else f"\n- MoE: every expert received at least {limit:,} tokens.")
        result.update({"experts": figure, "expert_table": hessians})
    return {"status": status, **result}


def build_tab(session: gr.State, context: AppContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            pool = gr.Number(value=16, label="Reference documents", precision=0, minimum=1,
                             info=HELP["pool"])
            fraction = gr.Slider(0.5, 1.0, value=0.9, step=0.05, label="Reach (fraction of the reference max)")
            outlier_ratio = gr.Number(value=6.0, label="Outlier: max above this many times its input's median channel")
            under = gr.Number(value=0, label="MoE: under-calibrated below this many tokens", precision=0, minimum=0,
                              info=HELP["under"])
            run, cancel = run_and_cancel("Measure coverage")
        with gr.Column(scale=3):
            status = status_block(session, "Which outlier channels the set excites (what a coverage selection maximizes), "
                                           "and for MoE models which experts it leaves without tokens.")
            coverage = result_plot()
            table = result_table("Per input (sortable)", max_height=320)
            experts = result_plot()
            expert_table = result_table("Per expert: tokens and Hessian", max_height=320)
    connect(run.click, measure, CoverageForm, {"pool": pool, "fraction": fraction, "outlier_ratio": outlier_ratio,
                                               "under_calibrated": under}, session,
            {"status": status, "coverage": coverage, "table": table, "experts": experts, "expert_table": expert_table},
            context, api_name="measure_coverage", status=status, cancel=cancel)

