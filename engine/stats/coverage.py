"""Coverage: which samples excite which outlier channels, and which reach which experts.

One head-less pass over a set of samples records, per sample, each distinct linear input's
per-channel max |x| and (MoE) the tokens it sends to each expert. From a reference pool's scores:
the targets are the outlier channels (a channel whose pool max exceeds ``outlier_ratio`` times the
median channel max of its input: relative, so it means the same on models whose activations differ
in scale) and every expert; a sample covers a channel when its own max reaches ``fraction`` of the
pool's max, an expert when it routes at least ``min_expert_tokens`` tokens to it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from engine.hooks import Side, TokenIndex
from engine.models import LoadedModel
from engine.models.layers import find_experts, find_linear_layers
from engine.progress import Progress, no_progress
from engine.runner import PassRequest, run_pass
from engine.sampling import CalibrationSet
from engine.stats.experts import ExpertAccumulator


class SampleChannelMax:
    """max |x| per (calibration sample, channel) of one input: [samples, channels], on the device."""

    def __init__(self, samples: int, channels: int, device: torch.device | str = "cpu") -> None:
        self.values = torch.zeros(samples, channels, dtype=torch.float32, device=device)

    def update(self, x: torch.Tensor, tokens: TokenIndex) -> None:
        """The tokens come sample by sample (``tokens.lengths`` of rows ``tokens.batch_rows``, known on
        the host): one max per sample's slice, no scatter (a scatter-max over tokens is slow on CPUs)."""
        if x.shape[0] == 0:
            return
        maxima = torch.stack([part.abs().amax(0) for part in x.split(list(tokens.lengths)) if part.shape[0]])
        rows = [row for row, length in zip(tokens.batch_rows, tokens.lengths) if length]
        index = torch.tensor(rows, dtype=torch.int64, device="cpu").to(self.values.device, non_blocking=True)
        self.values[index] = torch.maximum(self.values[index], maxima.to(torch.float32))

    def all_reduce(self, group=None) -> SampleChannelMax:
        torch.distributed.all_reduce(self.values, torch.distributed.ReduceOp.MAX, group)
        return self


@dataclass
class SampleScores:
    """channel_max[input]: [samples, channels] max |x|; expert_tokens[block]: [samples, experts]."""

    channel_max: dict[str, np.ndarray]
    expert_tokens: dict[str, np.ndarray]

    @property
    def samples(self) -> int:
        first = next(iter(self.channel_max.values()), None)
        return len(first) if first is not None else len(next(iter(self.expert_tokens.values())))


def score_samples(loaded: LoadedModel, calibration: CalibrationSet, batch_size: int = 8,
                  progress: Progress = no_progress) -> SampleScores:
    """Each sample's per-channel max |x| at every distinct linear input (the LM head's left out:
    it is not quantized) and its tokens per expert, in one pass."""
    samples = len(calibration)
    layers = [layer for layer in find_linear_layers(loaded.model) if not layer.is_head]
    experts = tuple(find_experts(loaded.model))
    request = PassRequest(layers, (Side.INPUT,), lambda channels, device: SampleChannelMax(samples, channels, device),
                          state_bytes=lambda layer: samples * layer.in_features * 4, batch_size=batch_size, experts=experts,
                          experts_factory=lambda layer, device: _RoutingOnly(layer, samples, device))
    result = run_pass(loaded, calibration, request, progress)
    channel_max = {key: value.values.cpu().numpy() for key, value in result.accumulators.items() if isinstance(value, SampleChannelMax)}
    expert_tokens = {layer.name: result.accumulators[layer.name].per_sample.cpu().numpy() for layer in experts}
    return SampleScores(channel_max, expert_tokens)


class _RoutingOnly(ExpertAccumulator):
    """Tokens per (sample, expert) only: no ranges, no Hessians, no split by expert (no host sync)."""

    def __init__(self, layer, samples: int, device) -> None:
        super().__init__(layer, samples, device, hessians=False)

    def _per_expert(self, x: torch.Tensor, routing: torch.Tensor) -> None:
        pass


@dataclass
class CoverageTargets:
    """What a selection should cover: one entry per target, with its weight and reference max."""

    kind: np.ndarray  # "channel" or "expert"
    key: np.ndarray  # the input (channels) or MoE block (experts)
    index: np.ndarray  # channel or expert number
    weight: np.ndarray
    reference: np.ndarray  # the pool's max |x| (channels); NaN for experts

    def __len__(self) -> int:
        return len(self.kind)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"kind": self.kind, "key": self.key, "index": self.index, "weight": self.weight,
                             "reference": self.reference})


def outlier_targets(pool: SampleScores, outlier_ratio: float = 6.0) -> CoverageTargets:
    """The pool's outlier channels (weight: how far above the threshold, max / (ratio · median))
    and every expert (weight 1: an expert no sample reaches gets no Hessian at all)."""
    parts = []
    for key, values in pool.channel_max.items():
        channel_max = values.max(0)
        threshold = outlier_ratio * max(float(np.median(channel_max)), np.finfo(np.float32).tiny)
        channels = np.flatnonzero(channel_max > threshold)
        parts.append(("channel", key, channels, channel_max[channels] / threshold, channel_max[channels]))
    for key, tokens in pool.expert_tokens.items():
        experts = np.arange(tokens.shape[1])
        parts.append(("expert", key, experts, np.ones(len(experts)), np.full(len(experts), np.nan)))
    return CoverageTargets(
        kind=np.concatenate([np.full(len(p[2]), p[0], dtype=object) for p in parts]) if parts else np.array([], dtype=object),
        key=np.concatenate([np.full(len(p[2]), p[1], dtype=object) for p in parts]) if parts else np.array([], dtype=object),
        index=np.concatenate([p[2] for p in parts]).astype(np.int64) if parts else np.array([], dtype=np.int64),
        weight=np.concatenate([p[3] for p in parts]).astype(np.float64) if parts else np.array([]),
        reference=np.concatenate([p[4] for p in parts]).astype(np.float64) if parts else np.array([]))


def covers(scores: SampleScores, targets: CoverageTargets, fraction: float = 0.9, min_expert_tokens: int = 1) -> np.ndarray:
    """[samples, targets] bool: the sample reaches ``fraction`` of the channel's reference max, or
    sends at least ``min_expert_tokens`` tokens to the expert."""
    out = np.zeros((scores.samples, len(targets)), dtype=bool)
    for key in np.unique(targets.key):
        for kind, source in (("channel", scores.channel_max), ("expert", scores.expert_tokens)):
            where = np.flatnonzero((targets.key == key) & (targets.kind == kind))
            if len(where) == 0:
                continue
            values = source[key][:, targets.index[where]]
            out[:, where] = (values >= fraction * targets.reference[where]) if kind == "channel" else (values >= min_expert_tokens)
    return out


def greedy_cover(covered: np.ndarray, weights: np.ndarray, count: int, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """Greedy weighted set cover: each pick is the sample covering the most uncovered weight (ties
    broken by ``rng``). Once every coverable target is covered a new round starts (each target
    wanted again), so a larger set covers each outlier more than once; a sample that covers nothing
    new is then drawn at random. Returns the picks and the weight each newly covered."""
    chosen, gains = [], []
    available = np.ones(covered.shape[0], dtype=bool)
    coverable = covered.any(0)
    wanted = coverable.copy()
    for _ in range(min(count, covered.shape[0])):
        gain = covered[:, wanted].astype(np.float64) @ weights[wanted]
        gain[~available] = -1.0
        if gain.max() <= 0 and wanted.sum() < coverable.sum():  # this round is done: the next one
            wanted = coverable.copy()
            gain = covered[:, wanted].astype(np.float64) @ weights[wanted]
            gain[~available] = -1.0
        best = np.flatnonzero(gain == gain.max())
        pick = int(rng.choice(best))
        chosen.append(pick)
        gains.append(float(max(gain[pick], 0.0)))
        available[pick] = False
        wanted &= ~covered[pick]
    return chosen, gains


def coverage_table(scores: SampleScores, targets: CoverageTargets, fraction: float = 0.9,
                   sample_names: list[str] | None = None) -> pd.DataFrame:
    """Per input (or MoE block): its targets, how many the set covers, and the samples that cover
    the most of them (a set's coverage against a reference pool's targets)."""
    covered = covers(scores, targets, fraction)
    names = sample_names or [str(i) for i in range(scores.samples)]
    rows = []
    for key in dict.fromkeys(targets.key):
        for kind in ("channel", "expert"):
            where = np.flatnonzero((targets.key == key) & (targets.kind == kind))
            if len(where) == 0:
                continue
            mine = covered[:, where]
            per_sample = mine.sum(1)
            top = [names[i] for i in np.argsort(-per_sample, kind="stable")[:3] if per_sample[i] > 0]
            rows.append({"key": key, "kind": kind, "targets": len(where), "covered": int(mine.any(0).sum()),
                         "share": float(mine.any(0).mean()), "responsible": ", ".join(top)})
    return pd.DataFrame(rows, columns=["key", "kind", "targets", "covered", "share", "responsible"])
