"""Model & Data: choose and load a model and a corpus, and see what was loaded."""
from __future__ import annotations

import functools

import gradio as gr
import pandas as pd

from engine import CorpusSpec, ModelSpec
from engine.corpus import corpus_summary, load_corpus
from engine.errors import CorpusError
from engine.progress import scaled
from engine.specs import BuiltinCorpus, CorpusKind
from ui import choices
from ui.errors import as_progress, shown_to_user
from ui.limits import Limits
from ui.state import MODELS, Session

PREVIEW_ROWS = 50
PREVIEW_CHARS = 160


def corpus_spec_from_widgets(
    kind: str, builtin_name: str, split: str, hub_name: str, hub_config: str, hub_split: str,
    text_column: str, upload: str | None, limits: Limits = Limits(),
) -> CorpusSpec:
    """The CorpusSpec the Model & Data widgets describe (raises SpecError on bad values)."""
    column = (text_column or "").strip() or None
    if kind == CorpusKind.BUILTIN.value:
        return CorpusSpec.builtin(builtin_name or BuiltinCorpus.MIXED.value, split=split)
    if kind == CorpusKind.HUB.value:
        return CorpusSpec.hub(
            (hub_name or "").strip(), split=(hub_split or "train").strip(),
            config=(hub_config or "").strip() or None, text_column=column,
        )
    if not upload:
        raise CorpusError("Choose a file to upload first (.txt, .jsonl, .json, .csv or .parquet).")
    return CorpusSpec.file(upload, text_column=column, max_bytes=limits.max_upload_bytes)


def table(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["Property", "Value"])


def preview(dataset) -> pd.DataFrame:
    """The first documents: where they come from, how long, how they start."""
    head = dataset.select(range(min(PREVIEW_ROWS, len(dataset))))
    return pd.DataFrame(
        {
            "row": head["row_id"],
            "source": head["source"],
            "characters": [len(t) for t in head["text"]],
            "text": [t[:PREVIEW_CHARS].replace("\n", " ⏎ ") for t in head["text"]],
        }
    )


@shown_to_user
def load_model_and_corpus(
    model_name: str, device: str, dtype: str, kind: str, builtin_name: str, split: str,
    hub_name: str, hub_config: str, hub_split: str, text_column: str, upload: str | None,
    session: Session | None, limits: Limits = Limits(), progress=gr.Progress(track_tqdm=True),
):
    """Load both, keep them in the session, and describe them."""
    report = as_progress(progress)
    model_spec = ModelSpec(name=(model_name or "").strip(), device=device, dtype=dtype)
    limits.check_model_name(model_spec.name)
    limits.check_model_size(model_spec.name)
    corpus_spec = corpus_spec_from_widgets(
        kind, builtin_name, split, hub_name, hub_config, hub_split, text_column, upload, limits
    )
    loaded = MODELS.get(model_spec, scaled(report, 0.0, 0.8))
    corpus = load_corpus(corpus_spec, scaled(report, 0.8, 1.0))
    session = (session or Session()).with_data(model_spec, corpus_spec, corpus)
    info = loaded.info
    status = (
        f"**Loaded** {info.name} on {info.device} ({info.parameters / 1e6:,.0f} M parameters, "
        f"{info.load_seconds:.1f} s{', from cache' if info.from_cache else ''}) · "
        f"**{corpus_spec.label}**: {len(corpus):,} documents"
    )
    return status, table(info.as_rows()), table(corpus_summary(corpus)), preview(corpus), session


def _corpus_visibility(kind: str):
    return (
        gr.update(visible=kind == CorpusKind.BUILTIN.value),
        gr.update(visible=kind == CorpusKind.HUB.value),
        gr.update(visible=kind == CorpusKind.FILE.value),
    )


def build_tab(session: gr.State, limits: Limits, default_model: str | None = None) -> None:
    """The Model & Data tab's widgets and wiring."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            gr.Markdown("### Model", elem_classes="cs-section-title")
            model = gr.Dropdown(
                choices.model_choices(), value=default_model or choices.default_model(), allow_custom_value=True,
                label="Model", info="A builtin model, a tiny test model, or a Hugging Face id"
                + ("" if limits.shared else " or a local folder"),
            )
            with gr.Row():
                device = gr.Dropdown(choices.DEVICE_CHOICES, value="auto", label="Device")
                dtype = gr.Dropdown(choices.DTYPE_CHOICES, value="auto", label="Dtype", info="auto: bf16 on GPU, fp32 on CPU")
        with gr.Column(scale=1):
            gr.Markdown("### Corpus", elem_classes="cs-section-title")
            kind = gr.Radio(choices.CORPUS_KINDS, value=CorpusKind.BUILTIN.value, label="Source")
            with gr.Group(visible=True) as builtin_group:
                with gr.Row():
                    builtin_name = gr.Dropdown(choices.BUILTIN_CORPORA, value=BuiltinCorpus.MIXED.value, label="Builtin corpus",
                                               info="Offline: Python's docs prose and standard library")
                    split = gr.Dropdown(choices.SPLITS, value="train", label="Split", info="test is held out (10%)")
            with gr.Group(visible=False) as hub_group:
                with gr.Row():
                    hub_name = gr.Dropdown(choices.HUB_DATASETS, value="wikitext2", allow_custom_value=True, label="Dataset")
                    hub_config = gr.Textbox(label="Config", placeholder="optional")
                    hub_split = gr.Textbox(value="train", label="Split")
            with gr.Group(visible=False) as file_group:
                upload = gr.File(label="Corpus file", file_types=[".txt", ".jsonl", ".json", ".csv", ".parquet"], type="filepath")
            text_column = gr.Textbox(label="Text column", placeholder="auto: 'text' (or chat 'messages')")
    load = gr.Button("Load model and corpus", variant="primary", size="lg")
    status = gr.Markdown("Choose a model and a corpus, then load them.", elem_classes="cs-status")
    with gr.Row(equal_height=False):
        model_table = gr.Dataframe(label="Model", interactive=False, wrap=True)
        corpus_table = gr.Dataframe(label="Corpus", interactive=False, wrap=True)
    corpus_preview = gr.Dataframe(
        label="First documents", interactive=False, wrap=True, max_height=360,
        column_widths=["7%", "25%", "10%", "58%"],
    )

    kind.change(_corpus_visibility, kind, [builtin_group, hub_group, file_group])
    load.click(
        functools.partial(load_model_and_corpus, limits=limits),
        [model, device, dtype, kind, builtin_name, split, hub_name, hub_config, hub_split, text_column, upload, session],
        [status, model_table, corpus_table, corpus_preview, session],
        show_progress_on=[status],
        concurrency_id="heavy",
        api_name="load_model_and_corpus",
    )
