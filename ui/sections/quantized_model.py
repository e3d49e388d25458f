"""Export tab, quantized model: a quantization run of the session written as a checkpoint that vLLM
and transformers load, checked by reading it back, then offered for download (or written to a local
folder). The run's weights are made again from the session's statistics and Hessians (GPTQ and RTN
are deterministic) and compared with the run's per-layer errors, so what is written is what was
measured; a run whose inputs have changed since is refused."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import numpy as np

from engine.errors import CalibscopeError
from engine.experiments import QuantRun
from engine.export import (
    CheckpointDtype,
    CheckpointFormat,
    CheckpointSummary,
    checkpoint_refusal,
    estimated_checkpoint_bytes,
    largest_weight_difference,
    reloaded_divergence,
    simulated_layers,
    stored_dtype,
)
from engine.figures import scheme_label
from engine.progress import Progress, labelled, no_progress, scaled
from engine.quant import QuantSpec
from ui.context import AppContext
from ui.exports import zipped
from ui.state import Session
from ui.wiring import connect, on_field

FORMAT_LABELS = {CheckpointFormat.COMPRESSED_TENSORS: "compressed-tensors (vLLM, transformers, llm-compressor)",
                 CheckpointFormat.GPTQ: "GPTQ v1 (GPTQModel, AutoGPTQ, optimum; symmetric 2/4/8-bit)"}
DTYPE_LABELS = {CheckpointDtype.BFLOAT16: "bfloat16 (served in it: vLLM, transformers)", CheckpointDtype.FLOAT16: "float16",
                CheckpointDtype.FLOAT32: "float32", CheckpointDtype.MODEL: "the model's own dtype"}

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "run": "from the Quantize tab",
    "check": "on the run's held-out windows; one more model load",
    "dtype": "of the embeddings, norms, biases, LM head and scales, and the config's: what the model is served in. "
             "A float32 model written in bfloat16 is half the size; FP4 weights run in bfloat16 only",
}


@dataclass(frozen=True)
class CheckpointForm:
    run: float | None = None  # the run's number in the session (1 = first)
    fmt: str = CheckpointFormat.COMPRESSED_TENSORS.value
    dtype: str = CheckpointDtype.BFLOAT16.value
    folder: str = ""
    check: bool = True


def run_choices(session: Session | None) -> list[tuple[str, int]]:
    runs = session.quant_runs if session is not None else []
    return [(f"{number}. {scheme_label(report)} · perplexity {report.quantized_perplexity:.2f} on {report.meta['evaluation']}",
             number) for number, report in enumerate(runs, 1)]


def refresh_runs(session: Session | None) -> dict:
    choices = run_choices(session)
    return gr.update(choices=choices, value=choices[-1][1] if choices else None)


def _chosen(form: CheckpointForm, session: Session):
    if not session.quant_runs:
        raise CalibscopeError("No quantization run yet: run one in the Quantize tab, then write it here.")
    number = int(form.run) if form.run else len(session.quant_runs)
    if not 1 <= number <= len(session.quant_runs):
        raise CalibscopeError(f"There is no quantization run {number}; choose one of the {len(session.quant_runs)} listed.")
    report = session.quant_runs[number - 1]
    run: QuantRun | None = report.meta.get("run")
    if run is None:
        raise CalibscopeError(f"Run {number} was not made in the Quantize tab, so its settings are unknown; quantize it there.")
    return number, report, replace(run, save_format=CheckpointFormat(form.fmt), save_dtype=CheckpointDtype(form.dtype))


def _same_as_measured(run: QuantRun, report, session: Session) -> None:
    """The inputs the run was made from are still the session's."""
    used = report.meta.get("calibration_sha256")
    current = (session.calibration.manifest.token_sha256 if run.sequential or run.spec.needs_calibration
               else (session.hessians or session.stats).meta.get("calibration_sha256")
               if (session.hessians or session.stats) is not None else None)
    if run.spec.needs_hessians and not run.sequential and session.hessians is None or (used or None) != (current or None):
        raise CalibscopeError("This run was made from statistics or Hessians that the session no longer holds (they were "
                              "collected again, or on another set); quantize again, then write the new run.")


def _check_errors(table, report) -> None:
    """The weights made again have the run's per-layer errors (else they are not what was measured)."""
    if "weight_error" not in report.layers:
        raise CalibscopeError("This run measured no weight error to check the weights made again against (it quantized no "
                              "weights); nothing to write as a checkpoint.")
    measured = report.layers.set_index("layer")["weight_error"].dropna()  # the KV cache's rows have none
    again = table.set_index("layer")["weight_error"].reindex(measured.index)
    if not np.allclose(again.to_numpy(), measured.to_numpy(), rtol=1e-5, atol=0):
        raise CalibscopeError("The weights made again differ from the run's (its Hessians or statistics were replaced); "
                              "quantize again, then write the new run.")


def check_folder(form: CheckpointForm, context: AppContext) -> None:
    """A folder of this machine to write to: refused on a shared Space, whose visitors download."""
    if form.folder.strip():
        on_field("folder", lambda: context.guard.policy.local_folder(form.folder.strip(), "the checkpoint folder"))


def write_checkpoint(form: CheckpointForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    check_folder(form, context)
    session.require_calibration()
    number, report, run = _chosen(form, session)
    _same_as_measured(run, report, session)
    loaded = context.model(session)
    reason = checkpoint_refusal(run.spec, run.save_format, stored_dtype(loaded, run.save_dtype))
    if reason:  # before the weights are made again
        raise CalibscopeError(reason)
    target = form.folder.strip()
    size = estimated_checkpoint_bytes(loaded, run.spec, run.save_dtype)
    if not target:
        context.limits.check_downloads(session.exports.megabytes(), size / 2**20, "The quantized model")
    plan, table = run.plan(loaded, session.calibrated, labelled(scaled(progress, 0, 0.4), "Quantizing"))
    _check_errors(table, report)
    provenance = {"simulated_perplexity": report.quantized_perplexity, "evaluation": report.meta["evaluation"]}
    checking = labelled(scaled(progress, 0.4, 1.0), "Writing and checking")

    def write_and_check(folder: Path, shown_as: str | None = None) -> list[str]:
        summary = run.write(loaded, folder, session.calibrated, plan, provenance=provenance)
        lines = [f"**{summary.describe(shown_as)}**", _read_back(summary, simulated_layers(loaded.model, plan))]
        if form.check:
            lines.append(_reloaded(summary, run, report, loaded, context, checking))
        return [*lines, _how_to_load(summary, run.spec)]

    if target:
        with context.guard.reserve_disk("The quantized model", size):
            return {"status": "\n".join(write_and_check(Path(target).expanduser())), "files": None}
    lines: list[str] = []
    name = f"{loaded.info.name.removeprefix('builtin:').replace('/', '-')}-{run.spec.label().replace(' ', '-')}"

    def download(staging: Path) -> Path:
        lines.extend(write_and_check(staging / name, f"{name}.zip"))
        return zipped(staging / name, compress=False)

    written_as = f"{run.save_format.value}-{run.save_dtype.value}"
    identity = (number, written_as, report.meta.get("calibration_sha256"), report.quantized_perplexity)
    path, fresh = session.exports.file(f"checkpoint-{number}-{written_as}", identity, download, size)
    if not fresh:
        shown = f"{run.save_format.value} in {run.save_dtype.value}"
        lines = [f"**Unchanged since the last click**: run {number} as {shown} is ready below."]
    return {"status": "\n".join(lines), "files": [str(path)]}


def _read_back(summary: CheckpointSummary, simulated: dict) -> str:
    """How far the stored layers, read back, are from the weights the run simulated."""
    difference = largest_weight_difference(summary.folder, simulated)
    stored = ("float16 scales, as GPTQ stores them" if summary.format is CheckpointFormat.GPTQ
              else f"scales stored in {summary.dtype}")
    return (f"- read back: the stored layers dequantize to the simulated weights within {difference:.3g} "
            f"({'exactly' if difference == 0 else stored})")


def _reloaded(summary: CheckpointSummary, run: QuantRun, report, loaded, context: AppContext, progress: Progress) -> str:
    """The reloaded checkpoint's perplexity and divergence from float on the run's held-out windows,
    against the simulated ones."""
    progress(0.5, "Reloading the checkpoint")
    evaluation = run.evaluation.windows_for(loaded, context.evaluations)
    reference = context.evaluations.reference(loaded, evaluation)
    size = loaded.info.parameters * next(loaded.model.parameters()).element_size()
    with context.models.borrow("Reloading the checkpoint", size):  # the reloaded model counts like any other
        back, how = reloaded_divergence(summary.folder, loaded, evaluation, reference)
    ratio = back.perplexity / report.quantized_perplexity
    verdict = "equal within 0.1%" if abs(ratio - 1) <= 1e-3 else "MORE THAN 0.1% APART"
    simulated_kld = f", simulated {report.divergence.mean_kld:.4f}" if report.divergence is not None else ""
    return (f"- reloaded ({how}): perplexity {back.perplexity:.3f}, simulated {report.quantized_perplexity:.3f} "
            f"(ratio {ratio:.5f}, {verdict}); KL divergence from float {back.mean_kld:.4f}{simulated_kld} "
            f"on {report.meta['evaluation']}")


def _how_to_load(summary: CheckpointSummary, spec: QuantSpec) -> str:
    serve = "`vllm serve FOLDER --kv-cache-dtype fp8`" if spec.kv_cache is not None else "`vllm serve FOLDER`"
    return f"- load it: {serve}, or " + (
        "`AutoModelForCausalLM.from_pretrained(FOLDER)`" if summary.format is CheckpointFormat.COMPRESSED_TENSORS
        else "`GPTQModel.load(FOLDER)`")


def build_section(session: gr.State, context: AppContext) -> None:
    gr.Markdown("### Quantized model\nWrite a quantization run of this session as a checkpoint: the weights are made "
                "again from this session's Hessians or statistics, checked against the run's per-layer errors, written "
                "(sharded safetensors, config, tokenizer, chat template) and read back.")
    with gr.Row():
        run = gr.Dropdown(run_choices(None), label="Quantization run", scale=3, info=HELP["run"])
        fmt = gr.Radio([(label, value.value) for value, label in FORMAT_LABELS.items()],
                       value=CheckpointFormat.COMPRESSED_TENSORS.value, label="Checkpoint format", scale=3)
        dtype = gr.Dropdown([(label, value.value) for value, label in DTYPE_LABELS.items()],
                            value=CheckpointDtype.BFLOAT16.value, label="Float parts in", scale=2, info=HELP["dtype"])
    with gr.Row():
        folder = gr.Textbox(label="Write to a new local folder (empty: prepare a download)", scale=3,
                            visible=context.limits.allow_local_paths, placeholder="e.g. ~/models/gemma-w4")
        check = gr.Checkbox(True, label="Reload it and measure perplexity", scale=1,
                            info=HELP["check"])
    write = gr.Button("Write quantized model", variant="primary")
    status = gr.Markdown("Choose a run and a format.", elem_classes="cs-status")
    files = gr.File(label="Quantized model", file_count="multiple", interactive=False)
    session.change(refresh_runs, session, run, queue=False, show_progress="hidden")
    connect(write.click, write_checkpoint, CheckpointForm,
            {"run": run, "fmt": fmt, "dtype": dtype, "folder": folder, "check": check},
            session, {"status": status, "files": files}, context, api_name="write_checkpoint", status=status, check=check_folder)
