"""Dataset: build a calibration set from the loaded corpus and see exactly what it holds."""
from __future__ import annotations

import time

import gradio as gr
import pandas as pd
import torch

from engine.errors import SpecError
from engine.figures import bucket_bars, length_histogram
from engine.figures.selection import selection_scatter
from engine.sampling import (
    ActivationClustersSpec,
    Allocation,
    EmbeddingClustersSpec,
    GptqWindowsSpec,
    LengthStratifiedSpec,
    PackedSpec,
    RandomSpec,
    SamplingSpec,
    SelfGeneratedSpec,
    Strategy,
    WindowMode,
    build,
)
from engine.sampling.specs import DEFAULT_EDGES
from ui.cancel import cancel_button, cancellable, wire_cancel
from ui.errors import shown_to_user, with_limits
from ui.limits import Limits
from ui.state import MODELS, Session

DEFAULT_STRATEGY = Strategy.LENGTH_STRATIFIED.value
GPU_DEFAULTS = {"nsamples": 128, "edges": DEFAULT_EDGES}
# On a CPU a first visitor should see every view within about a minute: fewer, shorter samples.
CPU_DEFAULTS = {"nsamples": 32, "edges": (64, 128, 256, 512)}


def first_visit_defaults() -> dict:
    return GPU_DEFAULTS if torch.cuda.is_available() else CPU_DEFAULTS
SUMMARY_BATCH = 8
STRATEGY_HELP = {
    Strategy.RANDOM.value: "Whole documents drawn at random, truncated to the length.",
    Strategy.LENGTH_STRATIFIED.value: "Documents drawn per length bucket; long documents are cut into windows, not dropped.",
    Strategy.GPTQ_WINDOWS.value: "GPTQ's recipe: random windows of exactly the length (joined corpus, or c4-style document rejection).",
    Strategy.PACKED.value: "Documents concatenated with EOS between them and cut into full blocks (AWQ style).",
    Strategy.EMBEDDING_CLUSTERS.value: "Sentence embeddings (MiniLM) of the documents, k-means, the document nearest each "
                                       "centroid: one sample per region of the corpus.",
    Strategy.ACTIVATION_CLUSTERS.value: "The same with the model's own hidden states (middle block) as embeddings: "
                                        "diversity where the quantizer looks. Runs the model on 256 candidates.",
    Strategy.SELF_GENERATED.value: "Text sampled from the model itself from BOS (temperature 1.5 falling to 0.8): "
                                   "no data needed; ignores the corpus.",
}
MAX_LENGTH_LABEL = "Max length (tokens)"


def parse_edges(text: str) -> tuple[int, ...]:
    """'64, 128, 256' -> (64, 128, 256); a message that shows the expected form otherwise."""
    try:
        return tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise SpecError(f"Bucket edges {text!r} must be whole numbers separated by commas, e.g. 64, 128, 256.") from None


def sampling_spec_from_widgets(strategy: str, nsamples: float, length: float, edges: str, allocation: str, mode: str,
                               seed: float, add_bos: bool, chat_template: bool) -> SamplingSpec:
    """The SamplingSpec the Dataset widgets describe (raises SpecError on bad values)."""
    common = {"nsamples": int(nsamples or 0), "seed": int(seed or 0), "add_bos": bool(add_bos), "chat_template": bool(chat_template)}
    chosen = Strategy(strategy)
    if chosen is Strategy.RANDOM:
        return RandomSpec(max_length=int(length or 0), **common)
    if chosen is Strategy.LENGTH_STRATIFIED:
        return LengthStratifiedSpec(edges=parse_edges(edges), allocation=allocation, **common)
    if chosen is Strategy.GPTQ_WINDOWS:
        return GptqWindowsSpec(seqlen=int(length or 0), mode=mode, **common)
    if chosen is Strategy.EMBEDDING_CLUSTERS:
        return EmbeddingClustersSpec(max_length=int(length or 0), **common)
    if chosen is Strategy.ACTIVATION_CLUSTERS:
        return ActivationClustersSpec(max_length=int(length or 0), **common)
    if chosen is Strategy.SELF_GENERATED:
        return SelfGeneratedSpec(max_length=int(length or 0), **common)
    return PackedSpec(seqlen=int(length or 0), **common)


def status_line(calibration, seconds: float) -> str:
    s = calibration.summary(SUMMARY_BATCH)
    count = f"{s['samples']:,} samples" + ("" if s["samples"] == s["asked"] else f" (asked {s['asked']:,})")
    line = (f"**Built** {count}, {s['tokens']:,} tokens, {s['padding_fraction']:.1%} padding at batch size {SUMMARY_BATCH}, "
            f"{s['truncated_fraction']:.1%} truncated · {seconds:.1f} s")
    notes = "".join(f"\n- {note}" for note in calibration.notes)
    return line + notes


@shown_to_user
def build_calibration_set(strategy, nsamples, length, edges, allocation, mode, seed, add_bos, chat_template,
                          session: Session | None, progress=gr.Progress(), request: gr.Request = None, *,
                          limits: Limits = Limits()):
    """Build the set, keep it in the session, and show it."""
    session = session or Session()
    corpus = session.require_corpus()
    spec = sampling_spec_from_widgets(strategy, nsamples, length, edges, allocation, mode, seed, add_bos, chat_template)
    limits.check_sampling(spec.nsamples, spec.length)
    loaded = MODELS.get(session.model_spec)
    started = time.perf_counter()
    calibration = build(corpus, loaded.tokenizer, spec, max_positions=loaded.info.max_positions,
                        corpus_label=session.corpus_spec.label, progress=cancellable(progress, request), model=loaded)
    seconds = time.perf_counter() - started
    prefix = len(calibration.manifest.tokenizer["prefix_ids"])
    edges_shown = spec.edges if isinstance(spec, LengthStratifiedSpec) else ()
    histogram = length_histogram(calibration.corpus_lengths, calibration.lengths, edges_shown, prefix)
    has_buckets = calibration.buckets is not None
    second = bucket_bars(calibration.buckets) if has_buckets else None
    if calibration.selection is not None:
        second = selection_scatter(calibration.selection)
    summary = pd.DataFrame(calibration.summary_rows(SUMMARY_BATCH), columns=["Property", "Value"])
    return (
        status_line(calibration, seconds), histogram, gr.update(value=second, visible=second is not None), summary,
        gr.update(value=calibration.buckets, visible=has_buckets), calibration.preview(loaded.tokenizer),
        session.with_calibration(calibration),
    )


WINDOWED = (Strategy.GPTQ_WINDOWS, Strategy.PACKED)


def _strategy_controls(strategy: str):
    chosen = Strategy(strategy)
    return (
        gr.update(visible=chosen is not Strategy.LENGTH_STRATIFIED,
                  label="Sequence length (tokens)" if chosen in WINDOWED else MAX_LENGTH_LABEL),
        gr.update(visible=chosen is Strategy.LENGTH_STRATIFIED),
        gr.update(visible=chosen is Strategy.LENGTH_STRATIFIED),
        gr.update(visible=chosen is Strategy.GPTQ_WINDOWS),
        gr.update(value=STRATEGY_HELP[strategy]),
    )


def build_tab(session: gr.State, limits: Limits) -> None:
    """The Dataset tab's widgets and wiring."""
    defaults = first_visit_defaults()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            strategy = gr.Radio([s.value for s in Strategy], value=DEFAULT_STRATEGY, label="Strategy")
            help_text = gr.Markdown(STRATEGY_HELP[DEFAULT_STRATEGY])
            with gr.Row():
                nsamples = gr.Number(value=defaults["nsamples"], label="Samples", precision=0, minimum=1)
                seed = gr.Number(value=0, label="Seed", precision=0, minimum=0)
            length = gr.Number(value=2048, label="Sequence length (tokens)", precision=0, minimum=2, visible=False)
            edges = gr.Textbox(value=", ".join(str(e) for e in defaults["edges"]), label="Bucket edges (tokens)",
                               info="Buckets are (previous edge, edge]; longer documents are cut into windows")
            allocation = gr.Radio([a.value for a in Allocation], value=Allocation.EQUAL.value, label="Allocation")
            mode = gr.Radio([m.value for m in WindowMode], value=WindowMode.JOINED.value, visible=False,
                            label="GPTQ recipe", info="joined: wikitext2-style; documents: c4-style rejection")
            add_bos = gr.Checkbox(value=True, label="Start every sample with BOS, as at inference",
                                  info="Off reproduces raw-window recipes; Gemma's perplexity is ~2.8x worse without BOS")
            chat_template = gr.Checkbox(value=True, label="Apply the chat template to chat data")
            with gr.Row():
                run = gr.Button("Build calibration set", variant="primary", scale=3)
                cancel = cancel_button()
        with gr.Column(scale=2):
            status = gr.Markdown("Load a model and a corpus, then build a set.", elem_classes="cs-status")
            histogram = gr.Plot(label="Token lengths", show_label=False)
            buckets_plot = gr.Plot(label="Buckets", show_label=False)
    with gr.Row(equal_height=False):
        summary = gr.Dataframe(label="Summary", interactive=False, wrap=True, scale=1)
        bucket_table = gr.Dataframe(label="Per bucket", interactive=False, scale=1)
    preview = gr.Dataframe(label="Samples (decoded; ⏎ marks a newline)", interactive=False, wrap=True, max_height=420,
                           column_widths=["7%", "7%", "10%", "22%", "54%"])

    strategy.change(_strategy_controls, strategy, [length, edges, allocation, mode, help_text])
    event = run.click(
        with_limits(build_calibration_set, limits),
        [strategy, nsamples, length, edges, allocation, mode, seed, add_bos, chat_template, session],
        [status, histogram, buckets_plot, summary, bucket_table, preview, session],
        show_progress_on=[status], concurrency_id="heavy", api_name="build_calibration_set",
    )
    wire_cancel(cancel, event, status)
