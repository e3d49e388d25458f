"""SpinQuant's offline rotations, fused into the float model's weights (nothing is added at inference),
as llm-compressor's SpinQuantModifier fuses its R1 and R2:

R1, the residual stream. Every block reads the stream h through a norm and writes back into it;
turning it, h' = h R1 (R1 = I ⊗ H / √b, orthonormal), leaves what the model computes unchanged when
every writer's output and every reader's input turn with it:
    the embeddings         E' = E R1
    each writer (o_proj, down_proj: their output is added to h)   W' = R1ᵀ W,  b' = b R1
    each reader (q/k/v, gate/up behind their norm, the LM head behind the final one)
                           RMSNorm(h R1) = RMSNorm(h) R1 once the norm's gain g is folded into its
                           readers: W' = W diag(g) R1, and the gain set to 1 (Gemma's (1 + w): w = 0)
and a head tied to the embeddings is untied (the two now differ). This holds for pre-norm layouts
(Llama, Qwen, Mistral, SmolLM2). A norm applied to a writer's output before the residual add (Gemma 2
and 3's post-attention and post-feed-forward norms) scales the turned stream channel by channel, which
no fused weight undoes, so R1 is refused there; so is a LayerNorm, whose mean is not turned with h.

R2, per head. Attention mixes tokens, never channels, so turning each value head by R2 (v_proj's rows:
W' = (I ⊗ R2)ᵀ W) turns each head's output by R2, and o_proj's columns undo it (W' = W (I ⊗ R2)):
exact wherever v_proj feeds o_proj (Gemma 3 too: its q/k norms never see the values). It also turns the
values the KV cache holds.

Both are checked on a probe before anything runs on them: the turned model's logits must equal the
original's to rounding. The statistics and Hessians are then collected again on the turned model, and
everything else (the inputs' online rotation, GPTQ, the KV cache) runs on it as on any float model.
llm-compressor's SpinQuant also centres each embedding row (QuaRot's step for LayerNorm models), which
changes an RMSNorm model's output; calibscope does not."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from engine import guard
from engine.errors import CalibscopeError
from engine.hooks import cached_attention
from engine.models import LoadedModel, find_experts, find_linear_layers, tied_head
from engine.progress import Progress, no_progress, scaled
from engine.quant.apply import QuantizedModel
from engine.quant.formats.hadamard import hadamard, has_hadamard, has_random_hadamard, random_hadamard, turned, wide_dtype
from engine.quant.methods.mappings import (
    gain_offset,
    is_norm,
    norm_readers,
    output_change,
    probe_with,
    renormalizing_norms,
    tolerance,
)
from engine.quant.methods.rotation import TURNED
from engine.quant.request import Calibrated
from engine.quant.specs import Granularity, QuantSpec, RotationMatrix, RotationSpec
from engine.stats import HessianSpec, StatsSpec, collect, collect_hessians

# A half-precision forward of the turned model differs from the original's by its weights' rounding
# (3% of the logits' norm on SmolLM2's 30 bf16 blocks, on text; far more on special tokens alone, so the
# probe is text); a broken identity (R1 across Gemma 3's sandwich norms) changes them 3-14 times their size.
HALF_TOLERANCE = 0.25


@dataclass(frozen=True)
class ResidualLayout:
    """Where the residual stream is read and written: ``norms`` (norm -> its gain's offset c in
    (c + w) and the layers reading its output), ``writers`` (layers whose output is added to the
    stream), the embedding's and the LM head's parameter names, and whether the two are one tensor."""

    embedding: str
    head: str
    norms: dict[str, tuple[float, tuple[str, ...]]]
    writers: tuple[str, ...]
    tied: bool


@dataclass
class FusedRotations:
    """The turned float model: ``floats`` (full parameter name -> its fused value, in the model's
    dtype) and the orders of R1 and R2 (None: not applied); ``untied``: the LM head now differs from
    the embeddings it shared (a checkpoint writes both, tie_word_embeddings false); ``change``: the
    probe's relative change of the logits (rounding); ``inputs``: the layers whose input a fused
    rotation turns (R1's readers, R2's o_proj) -> that rotation's order."""

    floats: dict[str, torch.Tensor]
    residual: int | None
    heads: int | None
    untied: bool
    change: float
    inputs: dict[str, int] = field(default_factory=dict)

    def turned_inputs(self, online: RotationSpec | None, widths: dict[str, int]) -> set[str]:
        """The layers an online rotation leaves alone: those whose input a fused rotation of the same
        order already turned. Turning them again by the same Hadamard would undo it (Sylvester's H H =
        n I) or correlate the two; QuaRot's online rotations go where the fused ones do not reach
        (down_proj's input, o_proj's across heads)."""
        if online is None:
            return set()
        return {name for name, order in self.inputs.items() if (online.block or widths.get(name)) == order}

    def plan(self) -> QuantizedModel:
        return QuantizedModel(floats=dict(self.floats))

    def merged(self, plan: QuantizedModel) -> QuantizedModel:
        """``plan`` (made on the turned model) with the turned floats it did not replace itself."""
        plan.floats = {**self.floats, **plan.floats}
        return plan

    def sentence(self) -> str:
        parts = ([f"the residual stream (R1, blocks of {self.residual})"] if self.residual else []) + \
                ([f"each value head (R2, {self.heads} channels)"] if self.heads else [])
        untied = "; the LM head was untied from the embeddings" if self.untied else ""
        return f"{' and '.join(parts)} turned and fused into the weights (logits changed {self.change:.1e}){untied}"


def residual_layout(loaded: LoadedModel) -> ResidualLayout:
    """The model's residual stream, probed (see the module's docstring); refused, naming what stands in
    the way, where R1 cannot be fused exactly."""
    model = loaded.model
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(embedding, nn.Embedding) or not isinstance(head, nn.Linear):
        raise CalibscopeError(f"{loaded.info.name} has no embedding table and Linear LM head calibscope can turn: leave "
                              "the residual stream (R1) off for this model.")
    if find_experts(model):
        raise CalibscopeError("Turning the residual stream (R1) of an MoE model would turn every expert too, which is not "
                              "built yet: rotate the heads (R2) or the inputs online instead.")
    names = {module: name for name, module in model.named_modules()}
    modules, hidden = dict(model.named_modules()), embedding.weight.shape[1]

    def rms_gain(norm: str) -> float:
        module, offset = modules[norm], gain_offset(modules[norm], loaded)
        if isinstance(module, nn.LayerNorm) or isinstance(getattr(module, "bias", None), torch.Tensor) or offset is None:
            raise CalibscopeError(f"{norm} is not an RMS norm with a gain (a LayerNorm subtracts its input's mean, which "
                                  "does not turn with the stream): the residual stream (R1) cannot be rotated exactly here.")
        return offset

    readers = {norm: tuple(reading) for norm, reading in norm_readers(loaded).items() if modules[norm].weight.shape[0] == hidden}
    final = final_norm(loaded, [name for name, module in modules.items() if is_norm(module)
                                and module.weight.shape[0] == hidden])
    if final is None:
        raise CalibscopeError(f"{names[head]} does not read a final norm's output, so the stream's last gain has nowhere "
                              "to go: the residual stream (R1) cannot be rotated exactly here.")
    readers[final] = tuple(dict.fromkeys((*readers.get(final, ()), names[head])))
    norms = {norm: (rms_gain(norm), reading) for norm, reading in readers.items()}
    read = {name for _, reading in norms.values() for name in reading}
    layers = [layer for layer in find_linear_layers(model, execution_order=False)
              if not layer.is_head and layer.out_features == hidden and layer.name not in read]
    if any(not isinstance(layer.module, nn.Linear) for layer in layers):
        raise CalibscopeError("The residual stream (R1) is turned in nn.Linear layers only, and this model writes it with "
                              "another kind (e.g. GPT-2's Conv1D).")
    for writer, after in renormalizing_norms(loaded, layers).items():
        wide = sorted(norm for norm in after if modules[norm].weight.shape[0] == hidden)
        if wide:
            raise CalibscopeError(f"{wide[0]} normalizes {writer}'s output before it joins the residual stream (Gemma 2 and "
                                  "3 have a norm after attention and after the MLP): it would scale the turned stream "
                                  "channel by channel, which no fused weight undoes, so the residual stream (R1) cannot "
                                  "be rotated exactly. Rotate the heads (R2) and the inputs online instead.")
    return ResidualLayout(f"{names[embedding]}.weight", f"{names[head]}.weight", norms,
                          tuple(layer.name for layer in layers), tied_head(model))


def final_norm(loaded: LoadedModel, candidates: list[str]) -> str | None:
    """The norm whose output the LM head reads: the same storage (the head reads a slice of it, the
    positions whose logits are kept), on one short forward."""
    model, modules = loaded.model, dict(loaded.model.named_modules())
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    found: list[str] = []

    def after_norm(name: str):
        def hook(_module, _args, output):
            if isinstance(output, torch.Tensor):
                outputs[output.untyped_storage().data_ptr()] = (name, output)  # kept: the storage stays its own
        return hook

    def before_head(_module, args):
        hit = outputs.get(args[0].untyped_storage().data_ptr()) if args and isinstance(args[0], torch.Tensor) else None
        if hit is not None:
            found.append(hit[0])

    handles = [modules[name].register_forward_hook(after_norm(name)) for name in candidates]
    handles.append(model.get_output_embeddings().register_forward_pre_hook(before_head))
    probe_with(loaded, handles)
    return found[-1] if found else None


def head_pairs(loaded: LoadedModel) -> list[tuple[str, str, int]]:
    """(v_proj, o_proj, head dimension) of every attention module with separate value and output
    projections; none is refused."""
    pairs = []
    for name, module in cached_attention(loaded.model).items():
        value, output = getattr(module, "v_proj", None), getattr(module, "o_proj", None)
        head_dim = getattr(module, "head_dim", None)
        if isinstance(value, nn.Linear) and isinstance(output, nn.Linear) and head_dim \
                and value.out_features % head_dim == 0 and output.in_features % head_dim == 0:
            pairs.append((f"{name}.v_proj", f"{name}.o_proj", int(head_dim)))
    if not pairs:
        raise CalibscopeError(f"{loaded.info.name} has no attention module with separate value and output projections "
                              "(v_proj, o_proj) calibscope can find: leave the heads (R2) off for this model.")
    return pairs


def _order(width: int, wanted: int, spec: RotationSpec, what: str, advice: str) -> int:
    exists = has_random_hadamard if spec.matrix is RotationMatrix.RANDOM_HADAMARD else has_hadamard
    if width % wanted or not exists(wanted):
        raise CalibscopeError(f"{what} has {width} channels, which have no {spec.matrix.value} matrix"
                              f"{' in blocks of ' + str(wanted) if wanted != width else ''}: {advice}")
    return wanted


def fuse_rotations(loaded: LoadedModel, spec: RotationSpec, progress: Progress = no_progress,
                   probe: torch.Tensor | None = None) -> FusedRotations:
    """The float model with R1 (``spec.residual``) and R2 (``spec.heads``) fused (the module's docstring),
    each weight turned in a wide dtype and rounded once; refused where it would not compute the
    original's logits on ``probe`` (tokens [batch, length]: text, e.g. the calibration set's; default: a
    short probe of the first token ids). Random matrices are drawn from one generator (``spec.seed``),
    R1's first. The model's lock is held throughout: its parameters are read as the float originals."""
    loaded.require_resident("Fused rotations")
    model = loaded.model
    generator = torch.Generator()
    if spec.seed is not None:
        generator.manual_seed(spec.seed)
    wide, device = wide_dtype(model.dtype), model.get_input_embeddings().weight.device

    def draw(order: int) -> torch.Tensor:  # on the model's device once, for every parameter it turns
        matrix = random_hadamard(order, generator) if spec.matrix is RotationMatrix.RANDOM_HADAMARD else hadamard(order)
        return matrix.to(device=device, dtype=wide)

    with loaded.lock:
        layout = residual_layout(loaded) if spec.residual else None
        pairs = head_pairs(loaded) if spec.heads else []
        # each fused parameter: what turns it (columns: x W' reads a turned input; rows: its output turns)
        columns: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}  # name -> (matrix, gain folded first)
        rows: dict[str, list[torch.Tensor]] = {}
        replaced: dict[str, torch.Tensor] = {}
        inputs: dict[str, int] = {}  # the quantizable layers whose input a fused rotation turns -> its order
        r1 = None
        if layout is not None:
            hidden = model.get_input_embeddings().weight.shape[1]
            r1 = draw(_order(hidden, spec.block or hidden, spec, "The residual stream",
                             "choose a block that divides them (e.g. 64), or leave the residual stream (R1) unrotated."))
            columns.setdefault(layout.embedding, []).append((r1, None))
            for norm, (offset, readers) in layout.norms.items():
                weight = model.get_parameter(f"{norm}.weight").detach()
                for reader in readers:
                    columns.setdefault(f"{reader}.weight", []).append((r1, weight.to(wide) + offset))
                    inputs[reader] = r1.shape[0]
                replaced[f"{norm}.weight"] = torch.full_like(weight, 1.0 - offset)  # the gain now 1
            for writer in layout.writers:
                rows.setdefault(f"{writer}.weight", []).append(r1)
                if isinstance(model.get_submodule(writer).bias, torch.Tensor):
                    columns.setdefault(f"{writer}.bias", []).append((r1, None))
        r2: dict[int, torch.Tensor] = {}
        for value, output, head_dim in pairs:
            if head_dim not in r2:
                r2[head_dim] = draw(_order(head_dim, head_dim, spec, "A value head",
                                           "leave the heads (R2) unrotated for this model."))
            rows.setdefault(f"{value}.weight", []).append(r2[head_dim])
            if isinstance(model.get_submodule(value).bias, torch.Tensor):
                columns.setdefault(f"{value}.bias", []).append((r2[head_dim], None))
            columns.setdefault(f"{output}.weight", []).append((r2[head_dim], None))
            inputs[output] = head_dim
        names = sorted(set(columns) | set(rows))
        sizes = [model.get_parameter(name).numel() for name in names]
        widest = max(sizes, default=0) * wide.itemsize
        kept = sum(sizes) * model.dtype.itemsize
        with guard.current().reserve_memory("Fusing the rotations (a turned copy of the model's weights)", kept + 3 * widest):
            for number, name in enumerate(names):
                original = model.get_parameter(name).detach()
                value = original.to(wide)
                for matrix, gain in columns.get(name, []):
                    value = turned(value * gain if gain is not None else value, matrix)
                for matrix in rows.get(name, []):
                    value = turned(value.T, matrix).T
                replaced[name] = value.to(original.dtype).contiguous()
                progress(0.8 * (number + 1) / len(names), f"Turned {name}")
            fused = FusedRotations(replaced, r1.shape[0] if r1 is not None else None, next(iter(r2), None),
                                   layout is not None and layout.tied, 0.0, inputs)
            fused.change = output_change(loaded, fused.plan(), probe)
    if fused.change > (tolerance(loaded) if model.dtype == torch.float32 else HALF_TOLERANCE):
        raise CalibscopeError(f"Fusing the rotations changed the model's logits by {fused.change:.2%}, more than rounding: "
                              f"{loaded.info.name}'s layout is not one calibscope can turn exactly. Rotate the inputs online "
                              "instead (placement 'every layer' or 'where it helps').")
    progress(1.0, f"Fused rotations: {fused.sentence()}")
    return fused


def turned_stats_spec(calibrated: Calibrated, spec: QuantSpec) -> StatsSpec:
    """The statistics' spec on both sides of the turn: the given report's, with per-channel histograms
    where per-channel percentiles set ``spec``'s input ranges."""
    per_channel = spec.activations.enabled and spec.activations.granularity is Granularity.CHANNEL
    base = calibrated.stats.spec if calibrated.stats is not None else StatsSpec()
    return replace(base, channel_histograms=base.channel_histograms or per_channel)


def calibrated_again(loaded: LoadedModel, calibrated: Calibrated, spec: QuantSpec, turned_by: RotationSpec,
                     output_errors: bool = True, progress: Progress = no_progress) -> Calibrated:
    """What ``calibrated`` holds, collected again on the turned model (call it inside ``quantized``
    with the fused plan): the statistics (always: the view of what the turn did to each input, the
    static ranges and the online rotation's "before"), marked as collected on the model ``turned_by``
    turned; the Hessians where given and read (GPTQ, or each layer's output error when
    ``output_errors``), with their own specs; the KV cache's statistics are
    left to be collected on it when calibrated. MoE experts' reports stay: R2 leaves every expert's
    input as it was, and R1 is refused for MoE models."""
    samples = calibrated.samples
    stats = collect(loaded, samples, turned_stats_spec(calibrated, spec), progress=scaled(progress, 0.0, 0.5))
    stats.meta[TURNED] = turned_by.label()
    hessians = None
    if calibrated.hessians is not None and (spec.weights.needs_hessians or output_errors):
        hessians = collect_hessians(loaded, samples, HessianSpec(**calibrated.hessians.meta["spec"]),
                                    scaled(progress, 0.5, 1.0))
    return Calibrated(samples, stats, hessians, calibrated.experts, None)
