"""StatsReport: per-layer summaries as a DataFrame, per-channel arrays, histograms; saved as
safetensors (tensors) + JSON (everything else)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from engine.bundle import read_bundle, write_bundle
from engine.hooks import Side, tap_key
from engine.models import block_of
from engine.stats.specs import StatsSpec

TENSORS = "statistics.safetensors"
SUMMARY = "statistics.json"
def percentile_column(percent: float) -> str:
    return f"p{percent:g}"


@dataclass
class StatsReport:
    """summary: one row per observed tensor (layer input or output), in execution order.
    channels: per observed tensor, per-channel arrays (min, max, absmax, mean, std, count, nan, inf,
    absmax_row, absmax_position, channel_percentiles [Q, C]) and the |x| histogram counts.
    Layers that read the same input as an earlier one point to its arrays (``shared_with``)."""

    summary: pd.DataFrame
    channels: dict[str, dict[str, torch.Tensor]]
    spec: StatsSpec
    meta: dict = field(default_factory=dict)

    def arrays(self, key: str) -> dict[str, torch.Tensor]:
        row = self.summary.set_index("key").loc[key]
        return self.channels[row["shared_with"] or key]

    def outliers(self, top: int | None = None) -> pd.DataFrame:
        """The channels with the largest |max| over all distinct tensors, with where each max was set."""
        rows = []
        for key, values in self.channels.items():
            absmax = values["absmax"]
            over = torch.nonzero(absmax > self.spec.outlier_threshold).flatten()
            for channel in over.tolist():
                rows.append({"key": key, "channel": channel, "absmax": float(absmax[channel]),
                             "min": float(values["min"][channel]), "max": float(values["max"][channel]),
                             "row": int(values["absmax_row"][channel]), "position": int(values["absmax_position"][channel])})
        frame = pd.DataFrame(rows, columns=["key", "channel", "absmax", "min", "max", "row", "position"])
        return frame.sort_values("absmax", ascending=False).head(top or self.spec.top_outliers).reset_index(drop=True)

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        flat = {f"{key}::{name}": value for key, values in self.channels.items() for name, value in values.items()}
        payload = {"spec": dataclasses.asdict(self.spec), "meta": self.meta,
                   "summary": self.summary.to_dict(orient="records")}  # exact floats (to_json keeps 10 digits)
        return write_bundle(folder, flat, payload, (TENSORS, SUMMARY), overwrite)

    @classmethod
    def load(cls, folder: str | Path) -> StatsReport:
        flat, payload = read_bundle(folder, (TENSORS, SUMMARY), "statistics")
        channels: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in flat.items():
            key, stat = name.rsplit("::", 1)
            channels.setdefault(key, {})[stat] = tensor
        summary = pd.DataFrame(payload["summary"])
        summary["shared_with"] = summary["shared_with"].fillna("")
        return cls(summary=summary, channels=channels, spec=StatsSpec(**payload["spec"]), meta=payload["meta"])


def _row(key: str, layer, side: str, values: dict, spec: StatsSpec, shared_with: str) -> dict:
    absmax = values["absmax"]
    top = int(absmax.argmax())
    row = {
        "key": key, "layer": layer.name, "side": side.value, "kind": layer.kind.value,
        "block": block_of(layer.name),
        "module": layer.name.split(".")[-1] if not layer.is_head else "lm_head",
        "channels": int(absmax.numel()), "tokens": int(values["count"].max()),
        "min": float(values["min"].min()), "max": float(values["max"].max()), "absmax": float(absmax.max()),
        "mean": float(values["tensor_mean"]), "std": float(values["tensor_std"]),
        "outlier_channels": int((absmax > spec.outlier_threshold).sum()),
        "top_channel": top, "absmax_row": int(values["absmax_row"][top]), "absmax_position": int(values["absmax_position"][top]),
        "nan": int(values["nan"].sum()), "inf": int(values["inf"].sum()), "shared_with": shared_with,
    }
    for percent, value in zip(spec.percentiles, values["tensor_percentiles"].tolist()):
        row[percentile_column(percent)] = value
    return row


def build_report(channels: dict[str, dict[str, torch.Tensor]], shared: dict[str, str], layers: list, spec: StatsSpec,
                 calibration, loaded, extra_meta: dict) -> StatsReport:
    """The report from each distinct tensor's arrays (``ActivationAccumulator.result``)."""
    rows = []
    for layer in layers:
        for side in spec.sides:
            key = tap_key(layer.name, side)
            leader = shared.get(key, "") if side is Side.INPUT else ""
            if (leader or key) in channels:
                rows.append(_row(key, layer, side, channels[leader or key], spec, leader))
    meta = {
        "model": loaded.info.name, "samples": len(calibration), "tokens": int(calibration.lengths.sum()),
        "calibration_sha256": calibration.manifest.token_sha256,
        "observed": len(rows), "distinct": len(channels), "shared": len(shared), **extra_meta,
    }
    return StatsReport(summary=pd.DataFrame(rows), channels=channels, spec=spec, meta=meta)
