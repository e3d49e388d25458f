"""collect_hessians: GPTQ Hessians of the selected layers in one pass, diagnosed and exportable."""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from engine.bundle import read_bundle, write_bundle
from engine.errors import CalibscopeError
from engine.hooks import Side, select_layers
from engine.models import LinearLayer, LoadedModel
from engine.progress import Progress, no_progress, scaled
from engine.runner import Execution, FinishedBlock, MemoryPlan, PassRequest, plan_for, run_pass
from engine.sampling import CalibrationSet
from engine.stats.hessian import DTYPES, HessianAccumulator
from engine.stats.hessian_diagnostics import HessianDiagnostics, diagnose
from engine.stats.specs import Diagnostics, HessianSpec, Precision, Storage

TENSORS = "hessians.safetensors"
SUMMARY = "hessians.json"
# How the exported tensors are scaled and how to read them as each peer's accumulator would hold them.
# GPTQ itself does not see the scale (damping is relative to the mean diagonal).
NORMALISATION = {
    "formula": "H = 2/N * sum over unpadded tokens of x x^T, N = the tokens counted (meta 'tokens')",
    "per": "token",
    "as_gptqmodel": "the same (GPTQModel normalises per token)",
    "as_llmcompressor": "multiply by tokens / samples (llm-compressor and the GPTQ reference normalise per sequence)",
}


def spec_record(spec: HessianSpec) -> dict:
    """The spec as JSON-normal data (lists, not tuples): equal to its own save/load round trip."""
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def hessian_megabytes(layers: list[LinearLayer], dtype: Precision = Precision.FLOAT32) -> float:
    """Memory of one Hessian per layer (in_features² values), before any sharing."""
    size = DTYPES[dtype].itemsize
    return sum(layer.in_features**2 for layer in layers) * size / 2**20


# What limits a Hessian, said of the distinct inputs it concerns ("3 of 72 inputs have ..."); the
# dashboard's status line and the HTML report both read these words.
HESSIAN_FINDINGS = {
    "data_limited": "have fewer tokens than input channels: add calibration data",
    "needs_damping": "need damping before a float32 Cholesky succeeds (GPTQ's default is 0.01)",
    "dead_channels": "have input channels that are never active (GPTQ sets their diagonal to 1)",
    "float32_rank": "are rank-deficient in float32 although they saw more tokens than channels: uneven channel "
                    "energy or fewer independent directions than channels (damping handles it; more data of the "
                    "same kind does not)",
}
NO_HESSIAN_FINDING = "Every Hessian is full rank and factorizes without damping"


@dataclass
class HessianReport:
    """hessians: H per distinct input (module name of the first layer reading it); shared_with maps
    every other layer to the one whose Hessian it reuses; diagnostics: one row per layer."""

    hessians: dict[str, torch.Tensor]
    shared_with: dict[str, str]
    diagnostics: pd.DataFrame
    eigenvalues: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def hessian(self, layer: str) -> torch.Tensor:
        return self.hessians[self.shared_with.get(layer, layer)]

    def has(self, layer: str) -> bool:
        """Whether this layer's Hessian is kept (diagnostics-only collections drop them)."""
        return self.shared_with.get(layer, layer) in self.hessians

    @property
    def warnings(self) -> list[str]:
        """One sentence per distinct input whose Hessian is rank-deficient (shared layers not repeated)."""
        rows = self.diagnostics[(self.diagnostics["warning"] != "") & (self.diagnostics["shared_with"] == "")]
        return [f"{row.layer}: {row.warning}" for row in rows.itertuples()]

    def findings(self) -> dict[str, list[str]]:
        """Distinct inputs by what limits their Hessian, the actionable kinds first:
        data_limited (fewer tokens than channels), needs_damping (float32 Cholesky fails undamped),
        dead_channels (never-active inputs), float32_rank (ill-conditioned, fine with damping)."""
        rows = self.diagnostics[self.diagnostics["shared_with"] == ""]
        deficient = rows["rank"] < rows["channels"]
        kinds = {
            "data_limited": deficient & (rows["tokens"] < rows["channels"]),
            "needs_damping": rows["min_damping"].fillna(1.0) > 0,
            "dead_channels": rows["dead_channels"] > 0,
        }
        kinds["float32_rank"] = deficient & ~kinds["data_limited"] & ~kinds["dead_channels"]
        return {kind: rows.loc[mask, "layer"].tolist() for kind, mask in kinds.items()}

    def finding_of(self) -> dict[str, str]:
        """Each distinct input's first finding (in findings() order), for a one-word table column."""
        found: dict[str, str] = {}
        for kind, layers in self.findings().items():
            for layer in layers:
                found.setdefault(layer, kind.replace("_", " "))
        return found

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """One tensor per layer named by its module name (what quantizers look up), plus JSON."""
        tensors: dict[str, torch.Tensor] = {}
        for layer in self.diagnostics["layer"]:
            hessian = self.hessian(layer)
            shared = any(hessian is kept for kept in tensors.values())
            tensors[layer] = hessian.clone() if shared else hessian  # safetensors refuses shared storage
        payload = {"meta": self.meta, "shared_with": self.shared_with,
                   "diagnostics": self.diagnostics.to_dict(orient="records"),
                   "eigenvalues": {k: v.tolist() for k, v in self.eigenvalues.items()}}
        return write_bundle(folder, tensors, payload, (TENSORS, SUMMARY), overwrite)

    @classmethod
    def load(cls, folder: str | Path) -> HessianReport:
        tensors, payload = read_bundle(folder, (TENSORS, SUMMARY), "Hessians")
        shared = payload["shared_with"]
        return cls(hessians={k: v for k, v in tensors.items() if k not in shared}, shared_with=shared,
                   diagnostics=pd.DataFrame(payload["diagnostics"]),
                   eigenvalues={k: torch.tensor(v, dtype=torch.float64, device="cpu") for k, v in payload["eigenvalues"].items()},
                   meta=payload["meta"])


class _FinishPerBlock:
    """after_block: each finished block's Hessians normalized in place (no second copy), diagnosed,
    and kept or dropped as the spec says, freeing the accumulators at once."""

    def __init__(self, spec: HessianSpec, progress: Progress, expected: int) -> None:
        self.spec, self.progress, self.expected = spec, progress, max(expected, 1)
        self.hessians: dict[str, torch.Tensor] = {}
        self.found: dict[str, HessianDiagnostics] = {}
        self.spectra: dict[str, torch.Tensor] = {}
        self.bytes = 0

    def __call__(self, block: FinishedBlock) -> None:
        for key in list(block.accumulators):
            accumulator = block.accumulators.pop(key)
            tokens = accumulator.tokens
            hessian = accumulator.take()
            self.bytes += hessian.numel() * hessian.element_size()
            if self.spec.diagnostics is not Diagnostics.NONE:
                self.found[key], self.spectra[key] = diagnose(key, hessian, tokens, self.spec.diagnostics is Diagnostics.FULL)
                self.progress(len(self.found) / self.expected, f"Diagnosed {key}")
            if self.spec.keep:
                self.hessians[key] = hessian


def request_for(layers: list[LinearLayer], spec: HessianSpec, after_block=None) -> PassRequest:
    dtype = DTYPES[spec.dtype]

    def factory(channels: int, device: torch.device) -> HessianAccumulator:
        return HessianAccumulator(channels, dtype, "cpu" if spec.storage is Storage.CPU else device)

    return PassRequest(layers, (Side.INPUT,), factory, state_bytes=lambda layer: layer.in_features**2 * dtype.itemsize,
                       batch_size=spec.batch_size, share_inputs=spec.share_inputs, after_block=after_block,
                       execution=spec.execution)


def memory_plan(loaded: LoadedModel, calibration: CalibrationSet, spec: HessianSpec) -> MemoryPlan:
    """The memory plan collecting Hessians with ``spec`` would follow (shown before it starts)."""
    layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, spec.include_head)
    return plan_for(loaded, calibration, request_for(layers, spec))


def collect_hessians(loaded: LoadedModel, calibration: CalibrationSet, spec: HessianSpec = HessianSpec(),
                     progress: Progress = no_progress) -> HessianReport:
    """One pass accumulating H = 2/N Σ XᵀX for every selected layer's input; each block's Hessians
    diagnosed as soon as the block is done (block by block: then kept or dropped)."""
    started = time.perf_counter()
    layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, spec.include_head)
    whole = memory_plan(loaded, calibration, spec).execution is Execution.WHOLE
    # whole-model: the pass, then the diagnostics of every block; block by block: both per block
    diagnosed = spec.diagnostics is not Diagnostics.NONE
    finish = _FinishPerBlock(spec, scaled(progress, 0.8, 1.0) if whole else no_progress, len(layers))
    result = run_pass(loaded, calibration, request_for(layers, spec, finish),
                      scaled(progress, 0.0, 0.8 if whole and diagnosed else 1.0))
    return _report(loaded, calibration, spec, layers, dict(result.shared), finish,
                   {"plan": result.plan.as_dict(), "seconds": round(time.perf_counter() - started, 2)})


def hessians_from_sums(loaded: LoadedModel, calibration: CalibrationSet, spec: HessianSpec,
                       sums: dict[str, tuple[torch.Tensor, int]], shared: dict[str, str],
                       progress: Progress = no_progress) -> HessianReport:
    """The report ``collect_hessians`` would give, from Σ XᵀX and token counts another pass over
    the same set already summed (a sample-count sweep's whole-set totals): no forward, only the
    diagnostics. ``sums`` must hold every distinct input of the layers ``spec`` selects."""
    started = time.perf_counter()
    layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, spec.include_head)
    needed = {shared.get(layer.name, layer.name) for layer in layers}
    missing = needed - set(sums)
    if missing:
        raise CalibscopeError(f"No summed Hessians for {len(missing)} inputs (e.g. {min(missing)}): collect them.")
    finish = _FinishPerBlock(spec, progress, len(layers))
    accumulators = {key: HessianAccumulator.of(sums[key][0].to(DTYPES[spec.dtype], copy=True), sums[key][1])
                    for key in sorted(needed)}
    finish(FinishedBlock(-1, accumulators, {}))
    return _report(loaded, calibration, spec, layers, shared, finish,
                   {"plan": None, "seconds": round(time.perf_counter() - started, 2), "from": "sample-count sweep"})


def _report(loaded: LoadedModel, calibration: CalibrationSet, spec: HessianSpec, layers: list[LinearLayer],
            shared: dict[str, str], finish: _FinishPerBlock, extra: dict) -> HessianReport:
    rows = []
    for layer in layers:
        source = shared.get(layer.name, layer.name)
        row = {"layer": layer.name, "shared_with": shared.get(layer.name, ""), "channels": layer.in_features}
        if source in finish.found:
            row.update({k: v for k, v in finish.found[source].as_dict().items() if k not in ("layer", "channels")})
        rows.append(row)
    meta = {
        "model": loaded.info.name, "spec": spec_record(spec), "samples": len(calibration),
        "tokens": int(calibration.lengths.sum()),
        "calibration_sha256": calibration.manifest.token_sha256, "dtype": spec.dtype.value, "storage": spec.storage.value,
        "layers": len(layers), "distinct": len({shared.get(layer.name, layer.name) for layer in layers}),
        "memory_mb": round(finish.bytes / 2**20, 2),
        "memory_without_sharing_mb": round(hessian_megabytes(layers, spec.dtype), 2),
        "kept": spec.keep, "normalisation": NORMALISATION, **extra,
    }
    names = {layer.name for layer in layers}
    return HessianReport(finish.hessians, {k: v for k, v in shared.items() if k in names}, pd.DataFrame(rows),
                         finish.spectra, meta)
