"""Hadamard rotations of quantized layers' inputs, as llm-compressor's QuIP applies them (its "v"
rotation: compressed-tensors' ``input`` transform online and ``weight_input`` inverse fused):

    x' = x R,  W' = W R,  so  x' W'ᵀ = x R Rᵀ Wᵀ = x Wᵀ      (R = H / √n orthonormal)

The float layer computes the same; what changes is what is quantized. An outlier channel of x is
spread over every channel of x R, so a per-tensor or per-token range stops being set by a few
channels (W4A4 int gains), and a weight's large columns are spread likewise. But a block-scaled
format (NVFP4's 16 values under one scale, MXFP4's 32) already isolates outliers in their block, and
spreading them into every block can cost more than it gains; so "where it helps" predicts, per input
(the layers that read one input share its rotation, as vLLM fuses them), whether rotating lowers the
layer's quantization error on the calibration set's own tokens, and rotates only those.

The prediction: on the first ``PROBE_TOKENS`` tokens of the set, each layer's relative output error
‖Q_in(x) Q_w(W)ᵀ - x Wᵀ‖² / ‖x Wᵀ‖² with the scheme's input quantizer and round-to-nearest weights,
unrotated and rotated (GPTQ, when asked, runs afterwards on the chosen weights)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd
import torch

from engine import guard
from engine.errors import CalibscopeError
from engine.memo import OwnerMemo
from engine.models import LinearLayer, LoadedModel, find_linear_layers
from engine.quant.activations.inputs import InputQuantizer, input_quantizer
from engine.quant.apply import QuantizedModel, module_weight, quantized
from engine.quant.formats.hadamard import (
    InputRotation,
    hadamard,
    has_hadamard,
    has_random_hadamard,
    random_hadamard,
    turned,
    wide_dtype,
)
from engine.quant.methods.matrices import quantize_groups
from engine.quant.specs import Granularity, QuantSpec, Rotation, RotationMatrix, RotationSpec, WeightMethod
from engine.runner import model_device
from engine.sampling import CalibrationSet
from engine.stats import StatsReport, StatsSpec, collect, percentile_column

TURNED = "fused_rotation"  # a statistics report's meta: the fused rotations of the model it was collected on
PROBE_TOKENS = 512  # tokens of the calibration set each layer's predicted errors are measured on
# the statistics of a model's inputs on one set, unrotated and rotated: a scheme, its placement
# changed or another scheme on the same set and rotation reuses them instead of two more passes
_STATISTICS: OwnerMemo[StatsReport] = OwnerMemo(keep=2)


@dataclass
class LayerRotations:
    """The rotated layers (name -> input width) and the ±1 Hadamard matrices they use, one per order
    (the width, or the spec's block), as a checkpoint stores them; each layer's rotated weight is made
    once (a GEMM of the weight's size times its width) and kept while the plan is made."""

    spec: RotationSpec
    matrices: dict[int, torch.Tensor]
    widths: dict[str, int]
    done: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def order(self, width: int) -> int:
        return self.spec.block or width

    def matrix(self, layer: str) -> torch.Tensor:
        """The layer's ±1 Hadamard matrix (float64): its whole width, or one block of R = I ⊗ H."""
        return self.matrices[self.order(self.widths[layer])]

    @cached_property
    def online(self) -> dict[str, InputRotation]:
        """Each rotated layer's rotation at inference, one object per matrix (shared by its layers)."""
        shared = {order: InputRotation(matrix) for order, matrix in self.matrices.items()}
        return {name: shared[self.order(width)] for name, width in self.widths.items()}

    def rotated(self, layer: str, matrix: torch.Tensor) -> torch.Tensor:
        """[out, in] W R of ``matrix`` (the layer's weight), kept in its dtype and made once: block by
        block (W's columns in blocks of b times H_b / √b), in float64 for a float32 weight (as
        compressed-tensors fuses), in float32 for a half-precision one, whose rounding is 2^16 times
        coarser than float32's."""
        key = (layer, matrix.data_ptr())
        if key not in self.done:
            self.done[key] = turned(matrix.to(wide_dtype(matrix.dtype)), self.matrix(layer)).to(matrix.dtype)
        return self.done[key]

    def weights(self, matrices: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.rotated(name, matrix) if name in self.widths else matrix for name, matrix in matrices.items()}

    def hessians(self, report):
        return None if report is None else RotatedHessians(report, self)

    def only(self, names: set[str]) -> LayerRotations:
        widths = {name: width for name, width in self.widths.items() if name in names}
        return LayerRotations(self.spec, {self.order(w): self.matrices[self.order(w)] for w in widths.values()}, widths,
                              {key: weight for key, weight in self.done.items() if key[0] in widths})

    def plan(self, layers: list[LinearLayer], matrices: dict[str, torch.Tensor]) -> QuantizedModel:
        """The float model with these rotations: rotated weights in, inputs rotated online."""
        return QuantizedModel(weights={layer.name: module_weight(layer, self.rotated(layer.name, matrices[layer.name]))
                                       for layer in layers if layer.name in self.widths},
                              rotations=self.online)


class RotatedHessians:
    """A HessianReport seen through the rotations: the Hessian of x R is Rᵀ H R, made block by block
    on the Hessian's device (H_bᵀ H[block i, block k] H_b / b), the last one kept (the layers that share
    an input ask for it in turn)."""

    def __init__(self, report, rotations: LayerRotations) -> None:
        self.report, self.rotations, self.shared_with = report, rotations, report.shared_with
        self._last: tuple[str, torch.Tensor] | None = None

    def has(self, layer: str) -> bool:
        return self.report.has(layer)

    def hessian(self, layer: str) -> torch.Tensor:
        hessian = self.report.hessian(layer)
        if layer not in self.rotations.widths:
            return hessian
        leader = self.shared_with.get(layer, layer)
        if self._last is None or self._last[0] != leader:
            self._last = (leader, rotated_hessian(hessian, self.rotations.matrix(layer)))
        return self._last[1]


def rotated_hessian(hessian: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Rᵀ H R for R = I ⊗ (matrix / √b), in float32 on H's device, returned in H's dtype."""
    order, width = matrix.shape[0], hessian.shape[0]
    blocks = hessian.float().view(width // order, order, width // order, order)
    hadamard = matrix.to(device=hessian.device, dtype=torch.float32)
    turned = torch.einsum("ij,aick,kl->ajcl", hadamard, blocks, hadamard) / order
    return turned.reshape(width, width).to(hessian.dtype)


def layer_rotations(loaded: LoadedModel, layers: list[LinearLayer], spec: RotationSpec) -> LayerRotations:
    """The Hadamard matrices of ``layers``' inputs; a layer whose width has no Hadamard matrix (or
    does not split into the spec's blocks) is left out, unrotated; none left is refused. Random ones
    are drawn as compressed-tensors' factory draws them for llm-compressor's QuIP: one generator, one
    matrix per order, in the order of the model's Linear layers (the LM head excluded) as registered,
    so the same seed gives the same matrices as its ``apply_transform_config``."""
    exists = has_random_hadamard if spec.matrix is RotationMatrix.RANDOM_HADAMARD else has_hadamard

    def order(width: int) -> int | None:
        wanted = spec.block or width
        return wanted if width % wanted == 0 and exists(wanted) else None

    # nn.Linear only: what compressed-tensors' transforms and the checkpoint writer take
    linear = [layer for layer in layers if isinstance(layer.module, torch.nn.Linear)]
    widths = {layer.name: layer.in_features for layer in linear if order(layer.in_features) is not None}
    if not widths:
        raise CalibscopeError(f"No quantized layer's input can be rotated: their widths "
                              f"({', '.join(sorted({str(layer.in_features) for layer in layers}))}) have no "
                              f"{'random ' if spec.matrix is RotationMatrix.RANDOM_HADAMARD else ''}Hadamard "
                              f"matrix{' in blocks of ' + str(spec.block) if spec.block else ''}. Choose a block that "
                              "divides them (e.g. 16, 32, 64), or leave the rotation off.")
    needed = {order(width) for width in widths.values()}
    generator = torch.Generator()
    if spec.seed is not None:
        generator.manual_seed(spec.seed)
    matrices: dict[int, torch.Tensor] = {}
    registered = [layer.in_features for layer in find_linear_layers(loaded.model, execution_order=False)
                  if not layer.is_head and isinstance(layer.module, torch.nn.Linear)]
    for width in [*registered, *widths.values()]:
        found = order(width)
        if found in needed and found not in matrices:
            matrices[found] = (random_hadamard(found, generator) if spec.matrix is RotationMatrix.RANDOM_HADAMARD
                               else hadamard(found))
    return LayerRotations(spec, matrices, widths)


@dataclass
class Rotated:
    """What a rotation gives the plan: the rotations kept, the statistics of every candidate layer's
    input unrotated (``before``) and rotated (``after``) on the calibration set, and one row per
    candidate layer (its ranges before and after, its predicted errors, whether it is rotated)."""

    rotations: LayerRotations
    before: StatsReport
    after: StatsReport
    table: pd.DataFrame

    def arrays(self, layer: str) -> dict[str, torch.Tensor] | None:
        return observed_arrays(self.after if layer in self.rotations.widths else self.before, layer)


def observed_arrays(report: StatsReport, layer: str) -> dict[str, torch.Tensor] | None:
    """The layer's input statistics in ``report``, None where it was not observed."""
    return report.arrays(layer) if (report.summary["key"] == layer).any() else None


def rotate(loaded: LoadedModel, layers: list[LinearLayer], matrices: dict[str, torch.Tensor], spec: QuantSpec,
           calibration: CalibrationSet, before: StatsReport | None, sharing: dict[str, str], progress) -> Rotated:
    """Rotate ``layers`` (their [out, in] float ``matrices``) as ``spec.rotation`` says: collect their
    inputs' statistics on the rotated model (and unrotated, unless ``before`` was collected on this set),
    predict each input group's error both ways, and keep the rotations the placement asks for."""
    candidates = layer_rotations(loaded, layers, spec.rotation)
    layers = [layer for layer in layers if layer.name in candidates.widths and layer.name in matrices]  # others: unrotated
    # per-channel histograms (512 bytes a channel) only where per-channel percentiles set the ranges
    per_channel = spec.activations.enabled and spec.activations.granularity is Granularity.CHANNEL
    stats_spec = replace(before.spec if before is not None else StatsSpec(), channel_histograms=per_channel)
    names, rotation = tuple(layer.name for layer in layers), replace(spec.rotation, placement=Rotation.EVERY_LAYER)
    # a model turned by fused rotations first (its statistics say so) is another model
    key = (calibration.manifest.token_sha256, stats_spec, names, before.meta.get(TURNED) if before is not None else None)
    if before is None or before.meta.get("calibration_sha256") != calibration.manifest.token_sha256:
        before = _STATISTICS.get(loaded.model, key) or _STATISTICS.put(
            loaded.model, key, collect(loaded, calibration, stats_spec, progress=lambda f, m="": progress(0.3 * f, m)))
    after = _STATISTICS.get(loaded.model, (*key, rotation))
    if after is None:
        with quantized(loaded, candidates.plan(layers, matrices)):
            after = collect(loaded, calibration, stats_spec, progress=lambda f, m="": progress(0.3 + 0.3 * f, m))
        _STATISTICS.put(loaded.model, (*key, rotation), after)
    progress(0.6, "Predicting each layer's error with and without the rotation")
    errors = predicted_errors(loaded, layers, matrices, candidates, spec, before, after, calibration)
    table = range_changes(layers, before, after).merge(errors, on="layer", how="left")  # a layer the probe missed: NaN
    if spec.rotation.placement is Rotation.WHERE_IT_HELPS:
        groups = table.assign(group=[sharing.get(name, name) for name in table["layer"]]).groupby("group")
        helps = groups[["error_rotated", "error_unrotated"]].transform("sum", min_count=1)
        table["rotated"] = (helps["error_rotated"] < helps["error_unrotated"]).to_numpy()  # unmeasured: left unrotated
    else:
        table["rotated"] = True
    kept = candidates.only(set(table.loc[table["rotated"], "layer"]))
    progress(1.0, f"Rotated {len(kept.widths)} of {len(matrices)} layers' inputs")
    return Rotated(kept, before, after, table)


def range_changes(layers: list[LinearLayer], before: StatsReport, after: StatsReport) -> pd.DataFrame:
    """Per layer, its input's ranges unrotated and rotated: |max|, |max| over the tensor's RMS (how far
    the largest value stands out), the largest channel |max| over the median channel's, the share of
    the channels' summed |max| that the largest 1% take, and p99.99 of |x| over |max| (the tail)."""
    rows = []
    summaries = {side: report.summary.set_index("key") for side, report in (("before", before), ("after", after))}
    tail = percentile_column(99.99)
    for layer in layers:
        row = {"layer": layer.name}
        for side, report in (("before", before), ("after", after)):
            if layer.name not in summaries[side].index:
                continue
            summary = summaries[side].loc[layer.name]
            absmax = report.arrays(layer.name)["absmax"].float()
            top = max(1, absmax.numel() // 100)
            row.update({f"absmax_{side}": float(absmax.max()),
                        f"crest_{side}": float(absmax.max()) / max(float(summary["std"]), 1e-30),
                        f"channel_ratio_{side}": float(absmax.max() / absmax.median().clamp(min=1e-30)),
                        f"top_share_{side}": float(absmax.topk(top).values.sum() / absmax.sum().clamp(min=1e-30))})
            if tail in summary.index:
                row[f"tail_{side}"] = float(summary[tail]) / max(float(absmax.max()), 1e-30)
        rows.append(row)
    return pd.DataFrame(rows)


def predicted_errors(loaded: LoadedModel, layers: list[LinearLayer], matrices: dict[str, torch.Tensor],
                     rotations: LayerRotations, spec: QuantSpec, before: StatsReport, after: StatsReport,
                     calibration: CalibrationSet) -> pd.DataFrame:
    """Each layer's relative output error on the set's first PROBE_TOKENS tokens (``probe_batch``),
    quantized unrotated and rotated (see the module's docstring), measured inside one forward of the
    float model, one layer at a time (the rotated weights are those the plan keeps)."""
    quantizers = {layer.name: (_input_quantizer(layer, before, spec), _input_quantizer(layer, after, spec))
                  for layer in layers}
    sums: dict[str, torch.Tensor] = {}

    def hook_for(layer: LinearLayer):
        def hook(_module, args):
            x = args[0].reshape(-1, layer.in_features).float()
            found = _errors(x, matrices[layer.name], rotations, layer.name, spec, *quantizers[layer.name])
            sums[layer.name] = sums[layer.name] + found if layer.name in sums else found
        return hook

    # one layer at a time: its weight in float32 and four copies (rotated, quantized), and the probe's
    # inputs and outputs four ways
    weight = max((layer.in_features * layer.out_features for layer in layers), default=0)
    sides = max((layer.in_features + layer.out_features for layer in layers), default=0)
    reserved = guard.current().reserve_memory("Predicting rotated errors", 4 * (5 * weight + 4 * PROBE_TOKENS * sides))
    with reserved, loaded.lock, torch.inference_mode():
        handles = [layer.module.register_forward_pre_hook(hook_for(layer)) for layer in layers]
        try:
            loaded.model(input_ids=probe_batch(calibration, model_device(loaded.model)), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
    totals = {name: found.cpu() for name, found in sums.items()}  # one read-back, after the pass
    return pd.DataFrame([{"layer": name, "error_unrotated": float(s[0] / s[2].clamp(min=1e-30)),
                          "error_rotated": float(s[1] / s[2].clamp(min=1e-30))} for name, s in totals.items()])


def probe_batch(calibration: CalibrationSet, device: torch.device | str = "cpu") -> torch.Tensor:
    """Up to PROBE_TOKENS tokens of the set as one unpadded batch [k, length]: its k longest sequences
    (the first of equal ones) cut to one length, k chosen for the most tokens (two 256-token windows,
    or one long document rather than many short ones): one forward, each layer's errors made once."""
    ordered = sorted(calibration.sequences, key=len, reverse=True)  # stable: equal lengths keep their order

    def cut(k: int) -> int:
        return min(len(ordered[k - 1]), PROBE_TOKENS // k)

    count = max(range(1, len(ordered) + 1), key=lambda k: k * cut(k))
    length = cut(count)
    return torch.as_tensor(np.stack([sequence[:length] for sequence in ordered[:count]]), dtype=torch.long, device=device)


def _input_quantizer(layer: LinearLayer, report: StatsReport, spec: QuantSpec) -> InputQuantizer | None:
    if not spec.activations.enabled:
        return None
    return input_quantizer(layer.name, observed_arrays(report, layer.name), spec.activations, report.spec.percentiles,
                           layer.module.weight.dtype, layer.in_features)


def _errors(x: torch.Tensor, weight: torch.Tensor, rotations: LayerRotations, name: str, spec: QuantSpec,
            plain: InputQuantizer | None, rotated: InputQuantizer | None) -> torch.Tensor:
    """Σ‖ŷ - y‖² unrotated, rotated, and Σ‖y‖², y = x Wᵀ, on these tokens."""
    reference = x @ weight.to(x.device).float().T
    turned = rotations.online[name].rotate(x)
    found = []
    for inputs, w, quantizer in ((x, weight, plain), (turned, rotations.rotated(name, weight), rotated)):
        w = w.to(x.device)
        if quantizer is not None:
            inputs = quantizer.to(x.device).fake_quantize(inputs)
        if spec.weights.enabled:
            w = quantize_groups([[w]], replace(spec.weights, method=WeightMethod.RTN), [None], [name])[0][0][0]
        found.append((inputs @ w.float().T - reference).pow(2).sum())
    return torch.stack([*found, reference.pow(2).sum()]).double()  # on the model's device: no read-back per layer
