"""Coverage: which samples excite which outlier channels, and which reach which experts.

One head-less forward over a set of samples records, per sample, each distinct linear input's
per-channel max |x| and (MoE) the tokens it sends to each expert. From a reference pool's scores:
the targets are the outlier channels (a channel whose pool max exceeds ``outlier_ratio`` times the
median channel max of its input: relative, so it means the same on models whose activations differ
in scale) and every expert; a sample covers a channel when its own max reaches ``fraction`` of the
pool's max, an expert when it routes at least ``min_expert_tokens`` tokens to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd
import torch

from engine.hooks import Side, headless_forward, observing, routed_point
from engine.models import LoadedModel, find_experts, find_linear_layers
from engine.progress import Progress, no_progress
from engine.sampling.embeddings import right_padded


class Target(str, Enum):
    """What a coverage target is: an outlier channel of a linear input, or an MoE expert."""

    CHANNEL = "channel"
    EXPERT = "expert"


@dataclass
class SampleScores:
    """channel_max[input]: [samples, channels] max |x|; expert_tokens[block]: [samples, experts]."""

    channel_max: dict[str, np.ndarray]
    expert_tokens: dict[str, np.ndarray]

    @property
    def samples(self) -> int:
        first = next(iter(self.channel_max.values()), None)
        return len(first) if first is not None else len(next(iter(self.expert_tokens.values())))

    def joined(self, other: SampleScores) -> SampleScores:
        """Both sets' samples in one table (this one's rows first)."""
        return SampleScores({k: np.concatenate([v, other.channel_max[k]]) for k, v in self.channel_max.items()},
                            {k: np.concatenate([v, other.expert_tokens[k]]) for k, v in self.expert_tokens.items()})


class _Scoring:
    """Observers of one head-less forward: per sample (batch row), each distinct linear input's
    max |x| over its real tokens and the tokens it routes to each expert."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None  # [batch, time] real tokens of the current batch
        self.channel: dict[str, list[torch.Tensor]] = {}
        self.experts: dict[str, list[torch.Tensor]] = {}
        self.last: tuple[torch.Tensor, str] | None = None

    def observe_input(self, key: str, x: torch.Tensor) -> None:
        if self.last is not None and self.last[0] is x:  # q/k/v, gate/up: one input, scored once
            return
        self.last = (x, key)
        tokens = x.reshape(*self.mask.shape, x.shape[-1])  # [batch, time, channels], also where a layer sees them flattened
        real = self.mask[..., None].to(x.dtype)
        self.channel.setdefault(key, []).append((tokens.abs() * real).amax(1).float())  # padding is 0, below any |x|

    def observe_routing(self, key: str, experts: int, routing: torch.Tensor) -> None:
        rows = routing.reshape(*self.mask.shape, -1)  # the experts see [batch · time, top-k]
        chosen = torch.zeros(*self.mask.shape, experts, dtype=torch.int64, device=routing.device)
        chosen.scatter_(2, rows.to(torch.int64), 1)
        self.experts.setdefault(key, []).append((chosen * self.mask[..., None]).sum(1))


def score_sequences(loaded: LoadedModel, sequences: list[np.ndarray], pad_id: int, batch_size: int = 8,
                    progress: Progress = no_progress) -> SampleScores:
    """Each sequence's per-channel max |x| at every distinct linear input (the LM head's left out:
    it is not quantized) and its tokens per MoE expert, in one head-less forward per batch."""
    loaded.require_resident("Coverage scoring")
    model, scoring = loaded.model, _Scoring()
    points = [(layer.module, Side.INPUT, lambda x, key=layer.name: scoring.observe_input(key, x))
              for layer in find_linear_layers(model) if not layer.is_head]
    points += [routed_point(layer,
                            lambda _h, routing, _w, key=layer.name, n=layer.experts: scoring.observe_routing(key, n, routing))
               for layer in find_experts(model)]
    device = next(model.parameters()).device
    with loaded.lock, torch.inference_mode(), observing(points):
        for start in range(0, len(sequences), batch_size):
            ids, mask = right_padded(sequences[start:start + batch_size], pad_id)
            scoring.mask, scoring.last = mask.to(device), None
            headless_forward(model, {"input_ids": ids.to(device), "attention_mask": scoring.mask})
            done = min(start + batch_size, len(sequences))
            progress(done / len(sequences), f"Scored {done:,} of {len(sequences):,} samples")
    return SampleScores({key: torch.cat(parts).cpu().numpy() for key, parts in scoring.channel.items()},
                        {key: torch.cat(parts).cpu().numpy() for key, parts in scoring.experts.items()})


@dataclass
class CoverageTargets:
    """What a selection should cover: one entry per target, with its weight and reference max."""

    kind: np.ndarray  # Target values
    key: np.ndarray  # the input (channels) or MoE block (experts)
    index: np.ndarray  # channel or expert number
    weight: np.ndarray
    reference: np.ndarray  # the pool's max |x| (channels); NaN for experts

    def __len__(self) -> int:
        return len(self.kind)


def outlier_targets(pool: SampleScores, outlier_ratio: float = 6.0) -> CoverageTargets:
    """The pool's outlier channels (weight: how far above the threshold, max / (ratio · median))
    and every expert (weight 1: an expert no sample reaches gets no Hessian at all)."""
    parts = []
    for key, values in pool.channel_max.items():
        channel_max = values.max(0)
        threshold = outlier_ratio * max(float(np.median(channel_max)), np.finfo(np.float32).tiny)
        channels = np.flatnonzero(channel_max > threshold)
        parts.append((Target.CHANNEL.value, key, channels, channel_max[channels] / threshold, channel_max[channels]))
    for key, tokens in pool.expert_tokens.items():
        experts = np.arange(tokens.shape[1])
        parts.append((Target.EXPERT.value, key, experts, np.ones(len(experts)), np.full(len(experts), np.nan)))

    def column(field: int, dtype) -> np.ndarray:  # kind and key repeated per target; the rest as given
        pieces = [np.full(len(part[2]), part[field], dtype=object) if field < 2 else part[field] for part in parts]
        return np.concatenate(pieces).astype(dtype) if pieces else np.array([], dtype=dtype)

    return CoverageTargets(*(column(field, dtype)
                             for field, dtype in enumerate((object, object, np.int64, np.float64, np.float64))))


def covers(scores: SampleScores, targets: CoverageTargets, fraction: float = 0.9, min_expert_tokens: int = 1) -> np.ndarray:
    """[samples, targets] bool: the sample reaches ``fraction`` of the channel's reference max, or
    sends at least ``min_expert_tokens`` tokens to the expert."""
    out = np.zeros((scores.samples, len(targets)), dtype=bool)
    for key in np.unique(targets.key):
        for kind, source in ((Target.CHANNEL, scores.channel_max), (Target.EXPERT, scores.expert_tokens)):
            where = np.flatnonzero((targets.key == key) & (targets.kind == kind.value))
            if len(where) == 0:
                continue
            values = source[key][:, targets.index[where]]
            out[:, where] = ((values >= fraction * targets.reference[where]) if kind is Target.CHANNEL
                             else (values >= min_expert_tokens))
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
        for kind in Target:
            where = np.flatnonzero((targets.key == key) & (targets.kind == kind.value))
            if len(where) == 0:
                continue
            mine = covered[:, where]
            per_sample = mine.sum(1)
            top = [names[i] for i in np.argsort(-per_sample, kind="stable")[:3] if per_sample[i] > 0]
            rows.append({"key": key, "kind": kind.value, "targets": len(where), "covered": int(mine.any(0).sum()),
                         "share": float(mine.any(0).mean()), "responsible": ", ".join(top)})
    return pd.DataFrame(rows, columns=["key", "kind", "targets", "covered", "share", "responsible"])
