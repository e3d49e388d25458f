"""collect_expert_stats: what an MoE block's router sent to each expert, and what each expert saw.

Per block and expert: the tokens routed to it (top-k), per calibration sample, and the routing
weights they carried; the per-channel min / max / |max| of its routed inputs and its GPTQ Hessian
H = 2/n Σ xxᵀ over them (the same HessianAccumulator as every dense layer), diagnosed (rank,
condition, damping), and the Hessian of its intermediate activation h = act(x · W_gateᵀ) · (x ·
W_upᵀ) over the same tokens (what its down projection reads). An expert no token reached has no
Hessian and no ranges (NaN), and its row says so: a zero Hessian would quantize it silently from
nothing.

``all_tokens`` (llm-compressor's moe_calibrate_all_experts, as it was meant to work): every expert
also sees every token, only for its statistics: Σ xxᵀ over all the block's tokens (one matrix, the
same for every expert) and each expert's Σ hhᵀ of its intermediate activation on all of them. The
forward is the router's own: the hooks read the experts' call and change nothing, so the blocks
after it see what inference sees.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from engine.errors import CalibscopeError, SpecError
from engine.hooks import TokenIndex
from engine.models import ExpertsLayer, LoadedModel, find_experts
from engine.progress import Progress, no_progress
from engine.runner import Execution, FinishedBlock, PassRequest, run_pass
from engine.sampling import CalibrationSet
from engine.specs import choice
from engine.stats.hessian import HessianAccumulator
from engine.stats.hessian_diagnostics import diagnose

NO_TOKENS = "no tokens: no Hessian, no ranges"


@dataclass(frozen=True)
class ExpertSpec:
    """hessians: accumulate and diagnose each expert's Hessian (hidden² values per expert while its
    block runs); keep_hessians: keep them in the report (tests, export) instead of dropping each
    after its diagnosis (the inputs', the intermediate activations' and, with all_tokens, both over
    every token); under_calibrated: the token count below which an expert is flagged."""

    hessians: bool = True
    keep_hessians: bool = False
    under_calibrated: int = 0  # 0: the expert's input channels (fewer tokens than channels: rank-deficient)
    batch_size: int = 8
    execution: Execution = Execution.AUTO
    all_tokens: bool = False  # also every expert's Hessians over every token (the all-experts calibration)
    diagnostics: bool = True  # each expert's Hessian diagnosed (an eigendecomposition each); off: only kept

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.under_calibrated < 0:
            raise SpecError("batch_size must be at least 1 and under_calibrated at least 0.")
        object.__setattr__(self, "execution", choice(Execution, self.execution, "execution"))


class ExpertAccumulator:
    """One MoE block's experts: routed tokens per (sample, expert), routing-weight sums, ranges and
    Hessians of each expert's routed inputs."""

    def __init__(self, layer: ExpertsLayer, samples: int, device: torch.device | str = "cpu", hessians: bool = True,
                 all_tokens: bool = False, routed_hessians: bool = True) -> None:
        """``routed_hessians`` off (with ``all_tokens``): only the all-token Hessians, for a quantization
        that calibrates every expert on every token (a block's routed Hessians are experts x hidden²)."""
        experts, hidden = layer.experts, layer.hidden
        self.layer = layer
        self.per_sample = torch.zeros(samples, experts, dtype=torch.int64, device=device)
        self.weight_sums = torch.zeros(experts, dtype=torch.float64, device=device)
        self.absmax = torch.zeros(experts, hidden, dtype=torch.float32, device=device)
        self.minimum = torch.full((experts, hidden), float("inf"), dtype=torch.float32, device=device)
        self.maximum = torch.full((experts, hidden), float("-inf"), dtype=torch.float32, device=device)
        routed = hessians and (routed_hessians or not all_tokens)
        self.hessians = [HessianAccumulator(hidden, torch.float32, device) for _ in range(experts)] if routed else None
        self.down = [HessianAccumulator(layer.intermediate, torch.float32, device) for _ in range(experts)] if routed else None
        self.all_inputs = HessianAccumulator(hidden, torch.float32, device) if hessians and all_tokens else None
        self.all_down = ([HessianAccumulator(layer.intermediate, torch.float32, device) for _ in range(experts)]
                         if hessians and all_tokens else None)

    def update(self, x: torch.Tensor, routing: torch.Tensor, weights: torch.Tensor, tokens: TokenIndex) -> None:
        if x.shape[0] == 0:
            return
        routing = routing.to(torch.int64)
        routed = torch.zeros(x.shape[0], self.layer.experts, dtype=torch.int64, device=x.device).scatter_(1, routing, 1)
        self.per_sample.index_add_(0, tokens.rows.to(x.device), routed)
        self.weight_sums.scatter_add_(0, routing.reshape(-1), weights.reshape(-1).to(self.weight_sums))
        self._per_expert(x, routing, weights)
        # every expert on every token (unscaled, as if with weight 1): the forward stays the router's
        if self.all_inputs is not None:
            self.all_inputs.update(x.to(torch.float32))
            for expert, accumulator in enumerate(self.all_down):
                accumulator.update(self.layer.intermediate_of(expert, x).to(torch.float32))

    def _per_expert(self, x: torch.Tensor, routing: torch.Tensor, weights: torch.Tensor) -> None:
        """Each expert's own tokens, as its eager forward gathers them (times their routing weight
        where the router scales the experts' inputs: Llama 4). Splitting by expert needs the counts
        on the host: one synchronisation per batch and MoE block."""
        flat = routing.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token_of = order // routing.shape[1]
        scale = weights.reshape(-1)[order] if self.layer.scaled_inputs else None
        start = 0
        for expert, size in enumerate(torch.bincount(flat, minlength=self.layer.experts).tolist()):
            if size:
                routed = x.index_select(0, token_of[start:start + size])
                if scale is not None:
                    routed = routed * scale[start:start + size, None].to(routed.dtype)
                rows = routed.to(torch.float32)
                torch.maximum(self.absmax[expert], rows.abs().amax(0), out=self.absmax[expert])
                torch.minimum(self.minimum[expert], rows.amin(0), out=self.minimum[expert])
                torch.maximum(self.maximum[expert], rows.amax(0), out=self.maximum[expert])
                if self.hessians is not None:
                    self.hessians[expert].update(rows)
                    self.down[expert].update(self.layer.intermediate_of(expert, routed).to(torch.float32))
            start += size

    @property
    def counts(self) -> torch.Tensor:
        return self.per_sample.sum(0)

    def all_reduce(self, group=None) -> ExpertAccumulator:
        ops = torch.distributed.ReduceOp
        for total, op in ((self.per_sample, ops.SUM), (self.weight_sums, ops.SUM), (self.absmax, ops.MAX),
                          (self.minimum, ops.MIN), (self.maximum, ops.MAX)):
            torch.distributed.all_reduce(total, op, group)
        for hessian in [*(self.hessians or ()), *(self.down or ()), *(self.all_down or ()),
                        *([self.all_inputs] if self.all_inputs is not None else [])]:
            hessian.all_reduce(group)
        return self


@dataclass
class ExpertReport:
    """routing: one row per (block, expert) with tokens, share of the block's routed tokens,
    samples that sent it any, mean routing weight, status; per_sample[block]: [samples, experts]
    token counts; hessians: one diagnosis row per expert (empty without Hessians); ranges[block]:
    absmax / minimum / maximum [experts, hidden] (NaN rows for experts without tokens)."""

    routing: pd.DataFrame
    per_sample: dict[str, np.ndarray]
    hessians: pd.DataFrame
    ranges: dict[str, dict[str, np.ndarray]]
    kept_hessians: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # the routed inputs' H
    meta: dict = field(default_factory=dict)
    kept_intermediate: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # the down projections' H
    kept_all_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # all_tokens: H of every token, per block
    kept_all_intermediate: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # all_tokens: h of every token

    def counts(self) -> pd.DataFrame:
        """Tokens per expert, blocks as rows and experts as columns (the coverage heat map)."""
        return self.routing.pivot(index="layer", columns="expert", values="tokens").loc[list(self.per_sample)]

    def unused(self) -> list[tuple[str, int]]:
        rows = self.routing[self.routing["tokens"] == 0]
        return list(zip(rows["layer"], rows["expert"].astype(int)))

    def under_calibrated(self, threshold: int) -> pd.DataFrame:
        return self.routing[self.routing["tokens"] < threshold]


def _status(tokens: int, threshold: int) -> str:
    if tokens == 0:
        return NO_TOKENS
    return f"under-calibrated: {tokens} tokens < {threshold}" if tokens < threshold else ""


class _FinishExperts:
    """after_block: each finished MoE block's accumulator turned into rows at once (its Hessians
    diagnosed, then dropped unless kept), so only one block's expert Hessians are ever held."""

    def __init__(self, spec: ExpertSpec, progress: Progress, blocks: int) -> None:
        self.spec, self.progress, self.blocks = spec, progress, max(blocks, 1)
        self.routing, self.diagnoses, self.per_sample, self.ranges, self.kept = [], [], {}, {}, {}
        self.kept_intermediate, self.kept_all_inputs, self.kept_all_intermediate = {}, {}, {}

    def __call__(self, block: FinishedBlock) -> None:
        for key in [k for k, v in block.accumulators.items() if isinstance(v, ExpertAccumulator)]:
            self.add(block.accumulators.pop(key))

    def add(self, accumulator: ExpertAccumulator) -> None:
        layer = accumulator.layer
        threshold = self.spec.under_calibrated or layer.hidden
        per_sample = accumulator.per_sample.cpu().numpy()
        counts, seen = per_sample.sum(0), (per_sample > 0).sum(0)
        weights = accumulator.weight_sums.cpu().numpy()
        total = max(int(counts.sum()), 1)
        for expert in range(layer.experts):
            tokens = int(counts[expert])
            self.routing.append({"layer": layer.name, "expert": expert, "tokens": tokens, "share": tokens / total,
                                 "samples": int(seen[expert]),
                                 "mean_weight": weights[expert] / tokens if tokens else float("nan"),
                                 "status": _status(tokens, threshold)})
            if accumulator.hessians is not None:
                self._diagnose(layer, expert, accumulator.hessians[expert], threshold)
            self._keep_others(accumulator, expert)
        if self.spec.keep_hessians and accumulator.all_inputs is not None:
            self.kept_all_inputs[layer.name] = accumulator.all_inputs.take()
        unused = counts == 0
        self.ranges[layer.name] = {name: np.where(unused[:, None], np.nan, values.cpu().numpy()) for name, values in
                                   (("absmax", accumulator.absmax), ("minimum", accumulator.minimum),
                                    ("maximum", accumulator.maximum))}
        self.per_sample[layer.name] = per_sample
        self.progress(len(self.per_sample) / self.blocks, f"Experts of {layer.name}")

    def _keep_others(self, accumulator: ExpertAccumulator, expert: int) -> None:
        """The expert's down projection's Hessian (and, with all_tokens, its all-token one), kept where
        asked and where tokens made it (never a zero matrix)."""
        name = accumulator.layer.name
        if self.spec.keep_hessians and accumulator.down is not None and accumulator.down[expert].tokens:
            self.kept_intermediate[(name, expert)] = accumulator.down[expert].take()
        if self.spec.keep_hessians and accumulator.all_down is not None and accumulator.all_down[expert].tokens:
            self.kept_all_intermediate[(name, expert)] = accumulator.all_down[expert].take()

    def _diagnose(self, layer: ExpertsLayer, expert: int, accumulator: HessianAccumulator, threshold: int) -> None:
        row = {"layer": layer.name, "expert": expert, "tokens": accumulator.tokens, "channels": layer.hidden}
        if accumulator.tokens and not self.spec.diagnostics:
            if self.spec.keep_hessians:
                self.kept[(layer.name, expert)] = accumulator.take()
            return
        if accumulator.tokens == 0:  # never a zero Hessian: nothing to diagnose, and said so
            self.diagnoses.append({**row, "rank": 0, "condition_number": float("nan"), "min_damping": float("nan"),
                                   "warning": NO_TOKENS})
            return
        hessian = accumulator.take()
        found, _ = diagnose(f"{layer.name}[{expert}]", hessian, row["tokens"])
        warning = found.warning or _status(row["tokens"], threshold)
        self.diagnoses.append({**row, "rank": found.rank, "condition_number": found.condition_number,
                               "min_damping": found.min_damping, "warning": warning})
        if self.spec.keep_hessians:
            self.kept[(layer.name, expert)] = hessian


def finished_report(accumulators: list[ExpertAccumulator], spec: ExpertSpec) -> ExpertReport:
    """The report of experts accumulated elsewhere (a block-by-block quantization's pass)."""
    finish = _FinishExperts(spec, no_progress, len(accumulators))
    for accumulator in accumulators:
        finish.add(accumulator)
    return _report(finish, [accumulator.layer for accumulator in accumulators], {"all_tokens": spec.all_tokens})


def collect_expert_stats(loaded: LoadedModel, calibration: CalibrationSet, spec: ExpertSpec = ExpertSpec(),
                         progress: Progress = no_progress) -> ExpertReport:
    """Routing, ranges and Hessians of every expert of every MoE block over ``calibration`` (padding excluded)."""
    experts = tuple(find_experts(loaded.model))
    if not experts:
        raise CalibscopeError(f"This {loaded.model.config.model_type} model has no MoE experts module calibscope reads "
                              "(fused gate_up_proj / down_proj, as transformers 5 stores Mixtral, Qwen-MoE, OLMoE).")
    samples = len(calibration)
    finish = _FinishExperts(spec, progress, len(experts))
    request = PassRequest([], (), lambda *_: None, state_bytes=lambda _layer: 0, batch_size=spec.batch_size,
                          execution=spec.execution, experts=experts, after_block=finish,
                          experts_factory=lambda layer, device: ExpertAccumulator(layer, samples, device, spec.hessians,
                                                                                  spec.all_tokens))
    result = run_pass(loaded, calibration, request, progress)
    for layer in experts:  # the whole-model runner finishes no block: what it leaves is done here
        if layer.name in result.accumulators:
            finish.add(result.accumulators.pop(layer.name))
    return _report(finish, list(experts), {"model": loaded.info.name, "samples": samples,
                                           "tokens": int(calibration.lengths.sum()), "top_k": _top_k(loaded),
                                           "blocks": len(experts), "all_tokens": spec.all_tokens})


def _report(finish: _FinishExperts, experts: list[ExpertsLayer], meta: dict) -> ExpertReport:
    order = {layer.name: i for i, layer in enumerate(experts)}
    routing = pd.DataFrame(finish.routing).sort_values(["layer", "expert"],
                                                       key=lambda c: c.map(order) if c.name == "layer" else c)
    per_sample = {layer.name: finish.per_sample[layer.name] for layer in experts}
    return ExpertReport(routing.reset_index(drop=True), per_sample, pd.DataFrame(finish.diagnoses), finish.ranges, finish.kept,
                        meta=meta, kept_intermediate=finish.kept_intermediate, kept_all_inputs=finish.kept_all_inputs,
                        kept_all_intermediate=finish.kept_all_intermediate)


def _top_k(loaded: LoadedModel) -> int | None:
    config = loaded.model.config
    return next((getattr(config, name) for name in ("num_experts_per_tok", "moe_topk", "top_k") if hasattr(config, name)), None)
