"""Model & Data: choose and load a model and a corpus, and see what was loaded."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from engine import CorpusSpec, ModelSpec
from engine.corpus import HUB_RECIPES, check_file, corpus_notes, corpus_summary, load_corpus, notes_rows
from engine.errors import CorpusError, HubUnavailable
from engine.progress import Progress, no_progress, scaled
from engine.specs import BuiltinCorpus, CorpusKind, Offload, Split, choice, labels
from ui import choices
from ui.context import AppContext
from ui.parsing import whole
from ui.state import Session
from ui.widgets import result_table, status_block
from ui.wiring import connect, on_field

PREVIEW_ROWS = 50
PREVIEW_CHARS = 160

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "offload": "auto: offloaded only when the model does not fit (passes then run block by block)",
    "builtin_name": "Offline: Python's docs prose and standard library",
    "split": "test is held out (10%)",
    "min_chars": "shorter documents are dropped (and counted)",
}


@dataclass(frozen=True)
class ModelDataForm:
    """What the Model & Data widgets hold."""

    model: str = choices.DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    offload: str = Offload.AUTO.value
    kind: str = CorpusKind.BUILTIN.value
    builtin_name: str = BuiltinCorpus.MIXED.value
    split: str = Split.TRAIN.value
    hub_name: str = "wikitext2"
    hub_config: str = ""
    hub_split: str = "train"
    text_column: str = ""
    min_chars: float = 16
    upload: str | None = None

    def model_spec(self) -> ModelSpec:
        return ModelSpec(name=(self.model or "").strip(), device=self.device, dtype=self.dtype, offload=self.offload)

    def corpus_spec(self, max_upload_bytes: int) -> CorpusSpec:
        """The CorpusSpec these widgets describe (raises SpecError / CorpusError on bad values)."""
        column = (self.text_column or "").strip() or None
        kind = choice(CorpusKind, self.kind, "corpus source")
        min_chars = whole(self.min_chars)
        if kind is CorpusKind.BUILTIN:
            return CorpusSpec.builtin(self.builtin_name or BuiltinCorpus.MIXED.value, split=self.split, min_chars=min_chars)
        if kind is CorpusKind.HUB:
            return CorpusSpec.hub((self.hub_name or "").strip(), split=(self.hub_split or "train").strip(),
                                  config=(self.hub_config or "").strip() or None, text_column=column, min_chars=min_chars)
        if not self.upload:
            raise CorpusError("Choose a file to upload first (.txt, .jsonl, .json, .csv or .parquet).")
        return CorpusSpec.file(self.upload, text_column=column, max_bytes=max_upload_bytes, min_chars=min_chars)


def check(form: ModelDataForm, context: AppContext) -> None:
    """What is refused before anything loads: a model or dataset name that is not allowed here, a
    config or split that carries a path, an upload that is not the visitor's or is too large."""
    policy = context.guard.policy
    on_field("model", lambda: policy.model_name(form.model_spec().name))
    spec = on_field("upload" if form.kind == CorpusKind.FILE.value else "kind",
                    lambda: form.corpus_spec(context.limits.max_upload_bytes))
    if spec.kind is CorpusKind.HUB:
        if spec.name not in HUB_RECIPES:
            on_field("hub_name", lambda: policy.dataset_name(spec.name))
            on_field("hub_config", lambda: policy.hub_word(spec.config, "dataset config"))
        on_field("hub_split", lambda: policy.hub_word(spec.split, "split"))
    if spec.kind is CorpusKind.FILE:
        on_field("upload", lambda: check_file(spec.name))


def table(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["Property", "Value"])


def preview(dataset) -> pd.DataFrame:
    """The first documents: where they come from, how long, how they start."""
    head = dataset.select(range(min(PREVIEW_ROWS, len(dataset))))
    return pd.DataFrame({
        "row": head["row_id"],
        "source": head["source"],
        "characters": [len(t) for t in head["text"]],
        "text": [t[:PREVIEW_CHARS].replace("\n", " ⏎ ") for t in head["text"]],
    })


def load_model_and_corpus(form: ModelDataForm, session: Session, context: AppContext,
                          progress: Progress = no_progress) -> dict:
    """Load both, keep them in the session, and describe them."""
    check(form, context)
    model_spec = form.model_spec()
    corpus_spec = form.corpus_spec(context.limits.max_upload_bytes)
    # the corpus first: a file refused for what it holds is refused before any wait for a model
    corpus = load_corpus(corpus_spec, scaled(progress, 0.0, 0.2))
    try:  # the model cache admits the request first (policy, size, files), then loads it
        loaded = context.models.get(model_spec, scaled(progress, 0.2, 1.0))
    except HubUnavailable as error:  # on a shared Space, local folders are no way out: do not suggest them
        raise (error.without_local_folders() if context.limits.shared else error) from None
    progress(1.0, f"Loaded {model_spec.name} and {corpus_spec.label}")  # a cached model reports nothing of its own
    info = loaded.info
    status = (
        f"**Loaded** {info.name} on {info.device} ({info.parameters / 1e6:,.0f} M parameters, "
        f"{info.load_seconds:.1f} s{', from cache' if info.from_cache else ''}) · "
        f"**{corpus_spec.label}**: {len(corpus):,} documents"
    ) + "".join(f"\n- {what}: {value}" for what, value in notes_rows(corpus_notes(corpus)))
    return {"status": status, "model_table": table(info.as_rows()), "corpus_table": table(corpus_summary(corpus)),
            "preview": preview(corpus), "session": session.with_data(model_spec, corpus_spec, corpus)}


def _corpus_visibility(kind: str):
    chosen = CorpusKind(kind)
    return tuple(gr.update(visible=chosen is shown) for shown in (CorpusKind.BUILTIN, CorpusKind.HUB, CorpusKind.FILE))


def build_tab(session: gr.State, context: AppContext) -> None:
    """The Model & Data tab's widgets and wiring."""
    limits = context.limits
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            gr.Markdown("### Model", elem_classes="cs-section-title")
            model = gr.Dropdown(
                choices.model_choices(), value=context.default_model or choices.default_model(), allow_custom_value=True,
                label="Model", info="A builtin model, a tiny test model, or a Hugging Face id"
                + ("" if limits.shared else " or a local folder"),
            )
            with gr.Row():
                device = gr.Dropdown(choices.DEVICE_CHOICES, value="auto", label="Device")
                dtype = gr.Dropdown(choices.DTYPE_CHOICES, value="auto", label="Dtype", info=choices.DTYPE_HELP)
                offload = gr.Dropdown(labels(Offload), value=Offload.AUTO.value, label="Weights",
                                      info=HELP["offload"])
        with gr.Column(scale=1):
            gr.Markdown("### Corpus", elem_classes="cs-section-title")
            kind = gr.Radio(choices.CORPUS_KINDS, value=CorpusKind.BUILTIN.value, label="Source")
            with gr.Group(visible=True) as builtin_group, gr.Row():
                builtin_name = gr.Dropdown(choices.BUILTIN_CORPORA, value=BuiltinCorpus.MIXED.value, label="Builtin corpus",
                                           info=HELP["builtin_name"])
                split = gr.Dropdown(choices.SPLITS, value="train", label="Split", info=HELP["split"])
            with gr.Group(visible=False) as hub_group, gr.Row():
                hub_name = gr.Dropdown(choices.HUB_DATASETS, value="wikitext2", allow_custom_value=True, label="Dataset")
                hub_config = gr.Textbox(label="Config", placeholder="optional")
                hub_split = gr.Textbox(value="train", label="Split")
            with gr.Group(visible=False) as file_group:
                upload = gr.File(label="Corpus file", file_types=[".txt", ".jsonl", ".json", ".csv", ".parquet"], type="filepath")
            with gr.Row():
                text_column = gr.Textbox(label="Text column", placeholder="auto: 'text' (or chat 'messages')", scale=2)
                min_chars = gr.Number(16, label="Min characters", precision=0, minimum=1, scale=1,
                                      info=HELP["min_chars"])
    load = gr.Button("Load model and corpus", variant="primary", size="lg")
    status = status_block(session, "Choose a model and a corpus, then load them.")
    with gr.Row(equal_height=False):
        model_table = result_table("Model", wrap=True)
        corpus_table = result_table("Corpus", wrap=True)
    corpus_preview = result_table("First documents", wrap=True, max_height=360, column_widths=["7%", "25%", "10%", "58%"])

    kind.change(_corpus_visibility, kind, [builtin_group, hub_group, file_group])
    widgets = {"model": model, "device": device, "dtype": dtype, "offload": offload, "kind": kind, "builtin_name": builtin_name,
               "split": split, "hub_name": hub_name, "hub_config": hub_config, "hub_split": hub_split,
               "text_column": text_column, "min_chars": min_chars, "upload": upload}
    outputs = {"status": status, "model_table": model_table, "corpus_table": corpus_table, "preview": corpus_preview,
               "session": session}
    # not in the heavy queue: a load waits for the model cache's lock, never behind other visitors' passes
    connect(load.click, load_model_and_corpus, ModelDataForm, widgets, session, outputs, context,
            api_name="load_model_and_corpus", status=status, track_tqdm=True, check=check, heavy=False)
