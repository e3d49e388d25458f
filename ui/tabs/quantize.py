"""Quantize: simulate a scheme with this session's statistics and Hessians, and measure perplexity."""
from __future__ import annotations

from dataclasses import dataclass, replace

import gradio as gr
import pandas as pd
import torch

from engine.errors import SpecError
from engine.experiments import HELD_OUT, UPLOADED, EvaluationSpec, QuantRun
from engine.figures import (
    divergence_runs,
    has_sensitivity,
    mixed_allocation,
    perplexity_runs,
    rotation_ranges,
    scheme_label,
    sensitivity_depth,
    short_name,
)
from engine.progress import Progress, no_progress
from engine.quant import (
    ALLOCATION_TOKENS,
    DEFAULT_ACT_ORDER,
    PRESETS,
    ActivationSpec,
    ActOrder,
    Allocation,
    AwqSpec,
    ExpertPolicy,
    Granularity,
    KVCacheSpec,
    KVRange,
    MixedSpec,
    NumberFormat,
    Quantization,
    QuantReport,
    QuantSpec,
    RangeMethod,
    Rotation,
    RotationMatrix,
    RotationSpec,
    Sensitivity,
    WeightMethod,
    WeightSpec,
)
from engine.specs import labels
from ui.cancel import run_and_cancel
from ui.context import AppContext
from ui.estimates import timed_step
from ui.parsing import whole
from ui.state import Session
from ui.tables import percent, shown
from ui.widgets import result_plot, result_table, status_block
from ui.wiring import connect, on_field

CUSTOM = "Custom"
DEFAULT_PRESET = "W4 g128 GPTQ"
# the KV cache choices: the label shown -> (strategy, constant scale); None: the cache stays in the model's dtype
KV_CHOICES = {"float (as the model computes it)": None, "FP8, constant scale": ("tensor", True),
              "FP8, a scale per tensor": ("tensor", False), "FP8, a scale per KV head": ("attn_head", False)}
KV_RANGES = [KVRange.MINMAX.value, KVRange.MSE.value, KVRange.ENTROPY.value]
NO_ROTATION = Rotation.NONE.value
ROTATIONS = labels(Rotation)
# SpinQuant's offline rotations, fused into the weights: the label shown -> the RotationSpec field it sets
FUSED = {"R1: the residual stream": "residual", "R2: each value head": "heads"}
ROTATION_BLOCKS = {"whole input": 0, "16 (NVFP4's blocks)": 16, "32 (MXFP4's blocks)": 32, "64": 64, "128": 128}
GROUPS = {"per tensor (FP8)": -1, "per channel": 0, "16": 16, "32": 32, "64": 64, "128": 128}
# On a CPU an evaluation must take seconds, not minutes: 8 x 256 tokens (GPU: 32 x 512).
CPU_EVALUATION = (8, 256)
GPU_EVALUATION = (32, 512)
SCHEME_WIDGETS = ("method", "weight_format", "bits", "group", "symmetric", "act_order", "act_format", "act_bits",
                  "range_method", "percentile", "granularity", "smoothing", "awq", "awq_clip", "experts")
# MoE experts' Hessians (their GPTQ): the label shown -> the policy
EXPERT_POLICIES = {"router's tokens; RTN below the input width": ExpertPolicy(),
                   "router's tokens; all tokens below the input width": ExpertPolicy(fallback="all-experts"),
                   "every token (all-experts)": ExpertPolicy(calibration="all-experts")}

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "preset": (
        "W4 g128 GPTQ is llm-compressor's GPTQModifier W4A16; the named ones are GPTQModel's, optimum's "
        "and the GPTQ paper's, applied to every layer at once from the collected Hessians unless "
        "Sequential is ticked. AWQ (llm-compressor's AWQModifier + W4A16; asym (vLLM): W4A16_ASYM) searches "
        "on the set itself. Static activations need statistics"
    ),
    "sequential": (
        "block by block on the calibration set, each block's Hessians from the quantized blocks before "
        "it, as the tools run it (true sequential for the gptqmodel and optimum schemes); runs its own "
        "pass: no collected Hessians needed, 2-3x slower"
    ),
    "weight_format": (
        "fp8: e4m3, per tensor or channel; nvfp4: e2m1 with an e4m3 scale per 16 and a global scale; "
        "mxfp4: e2m1 with a power-of-two scale per 32 (RTN)"
    ),
    "symmetric": ("untick for a zero point per group (asymmetric: llm-compressor's W4A16_ASYM; vLLM serves its "
                  "checkpoints, transformers cannot load them)"),
    "act_order": (
        "static: group scales in the original order (llm-compressor 'weight'); dynamic: groups in the "
        "permuted order (needs g_idx); group-aware: whole groups by importance (GPTQModel)"
    ),
    "act_format": "int uses the bits below; fp8, nvfp4 and mxfp4 quantize every selected input",
    "range_method": (
        "how a static range (or NVFP4's global scale) is set: entropy is TensorRT's KL method, headroom "
        "ModelOpt's NVFP4 method"
    ),
    "granularity": "token: dynamic, found at inference (nothing calibrated)",
    "smoothing": (
        "moves input outliers into the weights before W8A8 / FP8, from the statistics' per-channel "
        "ranges; 0.5 is llm-compressor's default"
    ),
    "experts": (
        "MoE models: whose tokens each expert's GPTQ is calibrated on, and what an expert the router "
        "starves gets"
    ),
    "sensitivity": "thorough: one extra evaluation per layer",
    "awq": (
        "searches each input's scales on the calibration set before the weights are rounded "
        "(llm-compressor's AWQModifier; runs its own pass)"
    ),
    "awq_clip": "then AutoAWQ's per-group weight clipping",
    "mixed": (
        "each group of layers that read one input (q/k/v, gate/up: vLLM fuses them) takes one of the "
        "widths below, the scheme's other settings kept, within the budget; GPTQ or RTN int weights, "
        "float activations"
    ),
    "kv_cache": (
        "keys (after the key norm and rotary embedding) and values rounded to FP8 e4m3 as they are cached, "
        "as vLLM's fp8 KV cache and the checkpoint's kv_cache_scheme do; calibrated scales take one forward of the set "
        "(or the KV statistics collected in Activation ranges); constant: scale 1, nothing calibrated"
    ),
    "rotation": (
        "each quantized layer's input rotated by a Hadamard matrix before it is quantized (x R online, W R fused: "
        "llm-compressor's QuIP, a checkpoint's transform_config); where it helps: only the inputs whose quantization "
        "error on the calibration set falls. Runs its own pass (the rotated inputs' statistics)"
    ),
    "rotation_block": "rotate consecutive blocks of this many channels (a block-diagonal Hadamard) instead of the whole input",
    "rotation_fused": (
        "SpinQuant's offline rotations, fused into the weights (free at inference): R1 turns the residual stream (the "
        "embeddings, every block's reads and writes, the norms' gains folded, the LM head untied; pre-norm models such as "
        "Llama, Qwen, SmolLM2, not Gemma 2/3), R2 each value head (v_proj into o_proj). The statistics and Hessians are "
        "collected again on the turned model"
    ),
    "kv_range": "how a calibrated scale's range is chosen from the cached values' |x| histogram; minmax is llm-compressor's",
    "budget": "average stored bits per weight over the quantized layers, scales and zero points included",
    "widths": "the weight widths to choose from (vLLM's kernels serve 4 and 8; transformers all)",
    "allocation": (
        "output error: the least summed output error on the calibration set's Hessians, solved exactly; "
        "divergence: the same, each group weighted by its measured KL divergence alone (one forward per "
        "group); the two rules give more bits to the outer blocks, or to attention values and MLP down "
        "projections as llama.cpp's Q4_K_M does"
    ),
}


def evaluation_defaults() -> tuple[int, int]:
    return GPU_EVALUATION if torch.cuda.is_available() else CPU_EVALUATION


@dataclass(frozen=True)
class QuantizeForm:
    """What the Quantize widgets hold: the scheme, the held-out text, the sensitivity mode."""

    method: str = WeightMethod.GPTQ.value
    weight_format: str = NumberFormat.INT.value
    bits: float = 4
    group: str = "128"
    symmetric: bool = True
    act_order: str = DEFAULT_ACT_ORDER.value
    act_format: str = NumberFormat.INT.value
    act_bits: float = 0
    range_method: str = RangeMethod.MINMAX.value
    percentile: float = 99.99
    granularity: str = Granularity.TENSOR.value
    smoothing: float | None = None
    awq: bool = False
    awq_clip: bool = False
    experts: str = next(iter(EXPERT_POLICIES))
    source: str = next(iter(HELD_OUT))
    upload: str | None = None
    length: float = 256
    windows: float = 8
    sensitivity: str = Sensitivity.CHEAP.value
    preset: str = CUSTOM
    sequential: bool = False
    mixed: bool = False
    budget: float = 4.5
    widths: tuple = (3, 4, 8)
    allocation: str = Allocation.OUTPUT_ERROR.value
    kv_cache: str = next(iter(KV_CHOICES))
    kv_range: str = KVRange.MINMAX.value
    rotation: str = NO_ROTATION
    rotation_matrix: str = RotationMatrix.RANDOM_HADAMARD.value
    rotation_block: str = next(iter(ROTATION_BLOCKS))
    rotation_fused: tuple = ()

    def fused_rotations(self) -> set[str]:
        """The RotationSpec fields the fused-rotation choices set."""
        unknown = [choice for choice in self.rotation_fused or () if choice not in FUSED]
        if unknown:
            raise SpecError(f"Fused rotation {unknown[0]!r} is not one of {', '.join(FUSED)}.")
        return {FUSED[choice] for choice in self.rotation_fused or ()}

    def rotation_spec(self) -> RotationSpec | None:
        fused = self.fused_rotations()
        if self.rotation == NO_ROTATION and not fused:
            return None
        if self.rotation_block not in ROTATION_BLOCKS:
            raise SpecError(f"Rotation block {self.rotation_block!r} is not one of {', '.join(ROTATION_BLOCKS)}.")
        return RotationSpec(self.rotation, self.rotation_matrix, ROTATION_BLOCKS[self.rotation_block],
                            residual="residual" in fused, heads="heads" in fused)

    def spec(self) -> QuantSpec:
        """The scheme, with its widths mixed per layer group when asked."""
        base = self.base_spec()
        if not self.mixed:
            return base
        return replace(base, mixed=MixedSpec(float(self.budget), tuple(whole(width) for width in self.widths or ()),
                                             self.allocation))

    def kv_cache_spec(self) -> KVCacheSpec | None:
        chosen = KV_CHOICES.get(self.kv_cache)
        if chosen is None:
            return None
        strategy, constant = chosen
        return KVCacheSpec(strategy, KVRange.CONSTANT if constant else self.kv_range)

    def base_spec(self) -> QuantSpec:
        if self.preset in PRESETS:  # the controls show it (editing one turns the scheme to Custom); its
            return replace(PRESETS[self.preset], kv_cache=self.kv_cache_spec(),  # damping etc. have no control of their own
                           rotation=self.rotation_spec())
        weights = WeightSpec(method=self.method, bits=whole(self.bits), group_size=GROUPS[self.group],
                             symmetric=bool(self.symmetric), act_order=self.act_order, format=self.weight_format)
        # a float input format sets its own bits; int inputs are off at 0 bits
        act_bits = whole(self.act_bits) if NumberFormat(self.act_format) is NumberFormat.INT else 0
        activations = ActivationSpec(bits=act_bits, range_method=self.range_method, percentile=float(self.percentile or 0),
                                     granularity=self.granularity, format=self.act_format)
        smoothing = None if self.smoothing in (None, "") else float(self.smoothing)
        return QuantSpec(weights, activations, smoothing=smoothing, awq=AwqSpec(clip=bool(self.awq_clip)) if self.awq else None,
                         experts=EXPERT_POLICIES[self.experts], kv_cache=self.kv_cache_spec(),
                         rotation=self.rotation_spec())


def preset_widgets(name: str) -> list:
    """The detailed controls showing a preset (left as they are for Custom)."""
    if name not in PRESETS:
        return [gr.update()] * len(SCHEME_WIDGETS)
    spec = PRESETS[name]
    w, a = spec.weights, spec.activations
    group = next(label for label, size in GROUPS.items() if size == w.group_size)
    return [w.method.value, w.format.value, w.bits, group, w.symmetric, w.act_order.value, a.format.value, a.bits,
            a.range_method.value, a.percentile, a.granularity.value, spec.smoothing, spec.awq is not None,
            spec.awq is not None and spec.awq.clip,
            next(label for label, policy in EXPERT_POLICIES.items() if policy == spec.experts)]


def status_line(report: QuantReport, reused: bool) -> str:
    meta = report.meta
    relative = 100 * report.gap / report.float_perplexity
    verb = "Reused: " if reused else ""
    return (f"{verb}**{scheme_label(report)}**: perplexity {report.float_perplexity:.2f} → {report.quantized_perplexity:.2f} "
            f"({report.gap:+.2f}, {relative:+.1f}%){divergence_phrase(report)} on {meta['evaluation']} "
            f"({meta['evaluation_tokens']:,} tokens) · "
            f"{meta['layers']} layers · {meta['seconds']:.1f} s{awq_sentence(report.layers)}{experts_sentence(report.layers)}"
            f"{kv_sentence(report)}{rotation_sentence(report)}")


def divergence_phrase(report: QuantReport) -> str:
    found = report.divergence
    if found is None:
        return ""
    return f", KL divergence {found.mean_kld:.4f} nats/token, same top token {100 * found.top1_agreement:.1f}%"


def experts_sentence(layers: pd.DataFrame) -> str:
    """How the MoE experts were calibrated, in one sentence (empty without experts)."""
    if "expert" not in layers or layers["expert"].isna().all():
        return ""
    rows = layers.dropna(subset=["expert"])
    per_expert = rows.assign(module=rows["layer"].str.rsplit(".", n=2).str[0]).drop_duplicates(subset=["module", "expert"])
    fallback = per_expert["calibration"].str.contains("fallback")
    took = f"{int(fallback.sum())} took the fallback (too few routed tokens)" if fallback.any() else "none needed a fallback"
    return (f"\n- MoE: {len(per_expert)} experts in {per_expert['module'].nunique()} blocks quantized (routers float); "
            f"{took}. Their rows name whose tokens each was calibrated on.")


def kv_sentence(report: QuantReport) -> str:
    """What the FP8 KV cache's scales cover, in one sentence (empty without one)."""
    spec, layers = report.spec.kv_cache, report.layers
    if spec is None:
        return ""
    rows = layers[layers["kind"] == "kv cache"]
    if not spec.calibrated:
        return f"\n- KV cache: FP8 with scale 1 in {len(rows) // 2} attention layers (nothing calibrated)."
    if "kv_error" not in rows or rows["kv_error"].isna().all():
        return f"\n- KV cache: FP8 in {len(rows) // 2} attention layers ({spec.label()}; their scales' ranges are in the table)."
    keys, values = (rows[rows["layer"].str.endswith(tensor)] for tensor in (" keys", " values"))
    return (f"\n- KV cache: FP8 in {len(keys)} attention layers; the cache's rounding costs a median "
            f"{100 * keys['kv_error'].median():.3f}% of the keys' energy and {100 * values['kv_error'].median():.3f}% "
            "of the values' on the calibration set (their rows are in the table).")


def rotation_sentence(report: QuantReport) -> str:
    """What the rotation did, in one sentence (empty without one)."""
    rows = report.layers
    fused = f"\n- Fused rotation: {report.meta['fused_rotation']}" if "fused_rotation" in report.meta else ""
    if fused and "rotated" not in rows and "channel_ratio_after" in rows:
        ratio = (rows["channel_ratio_before"] / rows["channel_ratio_after"]).median()
        fused += f"; each input's largest channel over its median one fell {ratio:.1f}x (median over layers)"
    fused += "." if fused else ""
    if report.spec.rotation is None or "rotated" not in rows:
        return fused
    turned = int(rows["input_turned"].sum()) if "input_turned" in rows else 0  # left to R1 / R2
    without = int((rows["kind"] != "kv cache").sum() - rows["rotated"].notna().sum()) - turned
    rows = rows.dropna(subset=["error_rotated"])
    rotated = rows[rows["rotated"].astype(bool)]
    fell = 1 - rows["error_rotated"].sum() / max(rows["error_unrotated"].sum(), 1e-30)
    left = len(rows) - len(rotated)
    where = f"; {left} whose predicted error it raised left unrotated" if left else ""
    ratio = (rows["channel_ratio_before"] / rows["channel_ratio_after"]).median()
    if without:
        where += f"; {without} more have no Hadamard matrix of their width and stay unrotated"
    if turned:
        where += f"; {turned} whose input the fused rotation turned are left to it"
    return (f"{fused}\n- Rotation: {len(rotated)} of {len(rows)} layers' inputs rotated{where}. On the calibration set's first "
            f"tokens, rotating all of them changes their summed output error by {-100 * fell:+.0f}% (predicted, RTN "
            f"weights); their largest channel over the median channel fell {ratio:.1f}x (median over layers).")


def awq_sentence(layers: pd.DataFrame) -> str:
    """What AWQ's search did, in one sentence (empty without AWQ)."""
    if "awq_error_identity" not in layers:
        return ""
    searched = layers.dropna(subset=["awq_error_identity"]).drop_duplicates(["awq_error_identity", "awq_error_best"])
    scaled = int((searched["awq_scale_max"] > 1).sum())
    kept = 1 - searched["awq_error_best"] / searched["awq_error_identity"]
    return (f"\n- AWQ searched {len(searched)} inputs on the calibration set and rescaled {scaled}; the measured modules' "
            f"output error under rounding fell by a median {100 * kept.median():.0f}% (at most {100 * kept.max():.0f}%).")


ERRORS = ("output_error", "input_error", "kv_error")
ROTATION_SHARES = ("error_unrotated", "error_rotated", "top_share_before", "top_share_after")
ROTATION_RANGES = tuple(f"{measure}_{side}" for measure in ("absmax", "crest", "channel_ratio", "tail")
                        for side in ("before", "after"))
AWQ_ERRORS = ("awq_error_identity", "awq_error_best", "output_error_before_awq", "clipped_groups")


def layer_table(report: QuantReport) -> tuple[pd.DataFrame, str]:
    """The per-layer table, most sensitive first when a sensitivity was measured (perplexity change,
    else the larger of a layer's output and input errors), and its title saying which order it is in."""
    table = report.layers.copy()
    table.insert(0, "name", [short_name(layer) for layer in table["layer"]])
    errors = [c for c in ERRORS if c in table and table[c].notna().any()]
    if "perplexity_change" in table:
        table, title = table.sort_values("perplexity_change", ascending=False), "Per layer, largest perplexity change first"
    elif errors:
        worst = table[errors].max(axis=1)
        table, title = table.loc[worst.sort_values(ascending=False).index], "Per layer, largest relative error first"
    else:
        title = "Per layer, in execution order (no sensitivity measured)"
    formats = {column: percent for column in (*ERRORS, *AWQ_ERRORS, *ROTATION_SHARES, "weight_error") if column in table}
    formats.update({c: ".4g" for c in ("gptq_loss", "perplexity_change", "clip", "hessian_trace", "smoothing_max",
                                       "awq_ratio", "awq_scale_max", *ROTATION_RANGES) if c in table})
    return shown(table.drop(columns=["seconds", "layer"]), formats), title


def sensitivity_note(report: QuantReport, sensitivity: str) -> str:
    """Why the per-layer view is empty, when it is."""
    if has_sensitivity(report):
        return ""
    if Sensitivity(sensitivity) is Sensitivity.NONE:
        return "\n- Per-layer sensitivity: none asked (choose cheap or thorough)."
    return ("\n- Per-layer sensitivity: nothing to measure it with: cheap needs this set's Hessians (weights) or "
            "statistics (activations); thorough measures perplexity per layer.")


def quant_run(form: QuantizeForm) -> QuantRun:
    """The run the form asks for, as a headless config would write it."""
    upload = form.upload if form.source == UPLOADED else None
    return QuantRun(form.spec(), EvaluationSpec(form.source, whole(form.length), whole(form.windows), upload),
                    form.sensitivity, form.sequential)


def check(form: QuantizeForm, context: AppContext) -> None:
    """A scheme that cannot be, an evaluation larger than this app allows, a held-out file that is not
    the visitor's own upload: refused before the request is queued."""
    on_field("kv_cache", form.kv_cache_spec)
    on_field("rotation_fused", form.fused_rotations)
    on_field("rotation_block", form.rotation_spec)
    on_field("preset", form.base_spec)
    spec = on_field("budget", form.spec)
    on_field("sequential", lambda: Quantization(spec, form.sequential))
    on_field("windows", lambda: context.limits.check_sampling(whole(form.windows), whole(form.length)))
    if form.source == UPLOADED and form.upload:
        on_field("upload", lambda: context.guard.upload(form.upload, "held-out text file"))


def run_quantization(form: QuantizeForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    calibration = session.require_calibration()
    check(form, context)
    run = quant_run(form)
    loaded = context.model(session)
    run.quantization.check(session.calibrated, loaded.resident)  # before the step's time is estimated
    evaluation = run.evaluation.windows_for(loaded, context.evaluations)
    passes = 2 * (1 + (loaded.info.linear_layers if run.sensitivity is Sensitivity.THOROUGH else 0))
    # sequential: about three forwards of the calibration set besides the GPTQ itself
    forwards = 3 if run.sequential else run.spec.own_pass_forwards
    # mixed precision: GPTQ (or RTN) at every width, then at the chosen ones; the divergence allocation a forward per group
    mixed = run.spec.mixed
    quantizations = 1 if mixed is None else len(mixed.bits) + 1
    allocation = 0 if mixed is None or mixed.allocation is not Allocation.DIVERGENCE else \
        2 * loaded.info.linear_layers * ALLOCATION_TOKENS
    units = evaluation.tokens * passes + quantizations * (4 * loaded.info.hidden_size if run.spec.needs_hessians else 0) + \
        forwards * int(calibration.lengths.sum()) + allocation
    with timed_step(context.times, loaded, "quantize", units, progress):
        report, reused = run.run(loaded, session.calibrated, context.evaluations, progress)
    # the cached report may be another session's too: this session's run goes on a copy
    report = replace(report, meta={**report.meta, "run": run})
    session = session.with_run(report)
    table, title = layer_table(report)
    return {"status": status_line(report, reused) + sensitivity_note(report, form.sensitivity),
            "summary": pd.DataFrame(report.summary_rows(), columns=["", "value"]),
            "runs": perplexity_runs(session.quant_runs), "divergence": divergence_runs(session.quant_runs),
            "depth": sensitivity_depth(report), "allocation": mixed_allocation(report), "rotation": rotation_ranges(report),
            "table": gr.update(value=table, label=title, visible=True), "session": session}


def build_tab(session: gr.State, context: AppContext) -> None:
    windows_default, length_default = evaluation_defaults()
    default = PRESETS[DEFAULT_PRESET]
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            preset = gr.Dropdown([*PRESETS, CUSTOM], value=DEFAULT_PRESET, label="Scheme",
                                 info=HELP["preset"])
            sequential = gr.Checkbox(False, label="Sequential (GPTQ)",
                                     info=HELP["sequential"])
            with gr.Accordion("Scheme details", open=False):
                method = gr.Radio(labels(WeightMethod), value=default.weights.method.value, label="Weights")
                weight_format = gr.Radio(labels(NumberFormat), value=NumberFormat.INT.value, label="Weight format",
                                         info=HELP["weight_format"])
                bits = gr.Slider(2, 8, value=default.weights.bits, step=1, label="Weight bits (int)")
                group = gr.Dropdown(list(GROUPS), value="128", label="Group size (input columns per scale)")
                symmetric = gr.Checkbox(True, label="Symmetric weight grids", info=HELP["symmetric"])
                act_order = gr.Radio(labels(ActOrder), value=default.weights.act_order.value, label="GPTQ activation order",
                                     info=HELP["act_order"])
                act_format = gr.Radio(labels(NumberFormat), value=NumberFormat.INT.value, label="Activation format",
                                      info=HELP["act_format"])
                act_bits = gr.Radio([0, 8, 6, 4], value=0, label="Activation bits (int; 0 = float)")
                range_method = gr.Radio(labels(RangeMethod), value=RangeMethod.MINMAX.value, label="Activation range",
                                        info=HELP["range_method"])
                percentile = gr.Number(99.99, label="Percentile of |x| (range 'percentile')")
                granularity = gr.Radio(labels(Granularity), value=Granularity.TENSOR.value, label="One range per",
                                       info=HELP["granularity"])
                smoothing = gr.Number(None, label="SmoothQuant α (empty: off)", minimum=0, maximum=1, step=0.05,
                                      info=HELP["smoothing"])
                experts = gr.Dropdown(list(EXPERT_POLICIES), value=next(iter(EXPERT_POLICIES)), label="MoE experts' Hessians",
                                      info=HELP["experts"])
                with gr.Row():
                    awq = gr.Checkbox(False, label="AWQ", info=HELP["awq"])
                    awq_clip = gr.Checkbox(False, label="AWQ clip search", info=HELP["awq_clip"])
            with gr.Accordion("Mixed precision", open=False):
                mixed = gr.Checkbox(False, label="Mix weight widths per layer", info=HELP["mixed"])
                budget = gr.Slider(2.0, 9.0, value=4.5, step=0.05, label="Budget (bits per weight)", info=HELP["budget"])
                widths = gr.CheckboxGroup([2, 3, 4, 5, 6, 8], value=[3, 4, 8], label="Widths", info=HELP["widths"])
                allocation = gr.Radio(labels(Allocation), value=Allocation.OUTPUT_ERROR.value, label="Allocation",
                                      info=HELP["allocation"])
            with gr.Accordion("KV cache", open=False):
                kv_cache = gr.Radio(list(KV_CHOICES), value=next(iter(KV_CHOICES)), label="KV cache", info=HELP["kv_cache"])
                kv_range = gr.Radio(KV_RANGES, value=KVRange.MINMAX.value, label="KV cache range", info=HELP["kv_range"])
            with gr.Accordion("Rotation", open=False):
                rotation = gr.Radio(ROTATIONS, value=NO_ROTATION, label="Rotate inputs", info=HELP["rotation"])
                rotation_matrix = gr.Radio(labels(RotationMatrix), value=RotationMatrix.RANDOM_HADAMARD.value,
                                           label="Rotation matrix")
                rotation_block = gr.Dropdown(list(ROTATION_BLOCKS), value=next(iter(ROTATION_BLOCKS)), label="Rotation block",
                                             info=HELP["rotation_block"])
                rotation_fused = gr.CheckboxGroup(list(FUSED), value=[], label="Fuse into the weights (SpinQuant)",
                                                  info=HELP["rotation_fused"])
            with gr.Accordion("Evaluation", open=True):
                source = gr.Dropdown([*HELD_OUT, UPLOADED], value=next(iter(HELD_OUT)), label="Held-out text")
                upload = gr.File(label="Held-out text file", type="filepath", height=90, visible=False)
                with gr.Row():
                    length = gr.Number(length_default, label="Window (tokens)", precision=0, minimum=2)
                    windows = gr.Number(windows_default, label="Windows", precision=0, minimum=1)
                sensitivity = gr.Radio(labels(Sensitivity), value=Sensitivity.CHEAP.value, label="Per-layer sensitivity",
                                       info=HELP["sensitivity"])
            run, cancel = run_and_cancel("Quantize and evaluate")
        with gr.Column(scale=3):
            status = status_block(session, "Quantize (simulated) with this set's Hessians (GPTQ) or statistics (static "
                                           "activations) and measure perplexity against float on held-out text.")
            summary = result_table("Run", show_label=False)
            runs = result_plot()
            divergence = result_plot()
    allocation_plot = result_plot()
    rotation_plot = result_plot()
    depth = result_plot()
    table = result_table("Per layer (sortable)", max_height=380)
    scheme = {"method": method, "weight_format": weight_format, "bits": bits, "group": group, "symmetric": symmetric,
              "act_order": act_order, "act_format": act_format, "act_bits": act_bits, "range_method": range_method,
              "percentile": percentile, "granularity": granularity, "smoothing": smoothing, "awq": awq, "awq_clip": awq_clip,
              "experts": experts}
    preset.input(preset_widgets, preset, [scheme[name] for name in SCHEME_WIDGETS])
    source.change(lambda chosen: gr.update(visible=chosen == UPLOADED), source, upload)
    for control in scheme.values():
        control.input(lambda: CUSTOM, None, preset)
    widgets = {**scheme, "source": source, "upload": upload, "length": length, "windows": windows,
               "sensitivity": sensitivity, "preset": preset, "sequential": sequential, "mixed": mixed, "budget": budget,
               "widths": widths, "allocation": allocation, "kv_cache": kv_cache, "kv_range": kv_range,
               "rotation": rotation, "rotation_matrix": rotation_matrix, "rotation_block": rotation_block,
               "rotation_fused": rotation_fused}
    outputs = {"status": status, "summary": summary, "runs": runs, "divergence": divergence, "allocation": allocation_plot,
               "rotation": rotation_plot,
               "depth": depth, "table": table, "session": session}
    connect(run.click, run_quantization, QuantizeForm, widgets, session, outputs, context, api_name="quantize",
            status=status, cancel=cancel, check=check)
