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
from engine.hooks import Side, select_layers
from engine.models import LinearLayer, LoadedModel
from engine.progress import Progress, no_progress, scaled
from engine.runner import calibration_pass
from engine.sampling import CalibrationSet
from engine.stats.hessian import DTYPES, HessianAccumulator
from engine.stats.hessian_diagnostics import diagnose
from engine.stats.specs import HessianSpec, Precision, Storage

TENSORS = "hessians.safetensors"
SUMMARY = "hessians.json"


def spec_record(spec: HessianSpec) -> dict:
    """The spec as JSON-normal data (lists, not tuples): equal to its own save/load round trip."""
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def hessian_megabytes(layers: list[LinearLayer], dtype: Precision = Precision.FLOAT32) -> float:
    """Memory of one Hessian per layer (in_features² values), before any sharing."""
    size = torch.tensor([], dtype=DTYPES[dtype]).element_size()
    return sum(layer.in_features**2 for layer in layers) * size / 2**20


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
                   eigenvalues={k: torch.tensor(v, dtype=torch.float64) for k, v in payload["eigenvalues"].items()},
                   meta=payload["meta"])


def collect_hessians(loaded: LoadedModel, calibration: CalibrationSet, spec: HessianSpec = HessianSpec(),
                     progress: Progress = no_progress, diagnostics: bool = True) -> HessianReport:
    """One pass accumulating H = 2/N Σ XᵀX for every selected layer's input, then diagnostics."""
    started = time.perf_counter()
    layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, spec.include_head)
    dtype = DTYPES[spec.dtype]

    def factory(channels: int, device: torch.device) -> HessianAccumulator:
        return HessianAccumulator(channels, dtype, "cpu" if spec.storage is Storage.CPU else device)

    result = calibration_pass(loaded, calibration, layers, (Side.INPUT,), factory, spec.batch_size,
                                     spec.share_inputs, scaled(progress, 0.0, 0.8 if diagnostics else 1.0))
    pass_seconds = time.perf_counter() - started
    hessians = {key: acc.result() for key, acc in result.accumulators.items()}
    tokens = {key: acc.tokens for key, acc in result.accumulators.items()}
    rows, spectra = [], {}
    for number, layer in enumerate(layers):
        source = result.shared.get(layer.name, layer.name)
        if diagnostics and source not in spectra:
            found, spectra[source] = diagnose(source, hessians[source], tokens[source])
            progress(0.8 + 0.2 * (number + 1) / len(layers), f"Diagnosed {layer.name}")
        elif not diagnostics:
            found = None
        row = {"layer": layer.name, "shared_with": result.shared.get(layer.name, ""), "channels": layer.in_features}
        if found is not None:
            row.update({k: v for k, v in found.as_dict().items() if k not in ("layer", "channels")})
        rows.append(row)
    distinct_mb = sum(h.numel() * h.element_size() for h in hessians.values()) / 2**20
    meta = {
        "model": loaded.info.name, "spec": spec_record(spec), "samples": len(calibration), "tokens": int(calibration.lengths.sum()),
        "calibration_sha256": calibration.manifest.token_sha256, "dtype": spec.dtype.value, "storage": spec.storage.value,
        "layers": len(layers), "distinct": len(hessians), "memory_mb": round(distinct_mb, 2),
        "memory_without_sharing_mb": round(hessian_megabytes(layers, spec.dtype), 2),
        "pass_seconds": round(pass_seconds, 2), "seconds": round(time.perf_counter() - started, 2),
    }
    return HessianReport(hessians, dict(result.shared), pd.DataFrame(rows), spectra, meta)
