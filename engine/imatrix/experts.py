"""Per-expert importance of an MoE block, as llama-imatrix collects it for MUL_MAT_ID weights.

For each expert: Σx² over the tokens routed to it at the experts' input (what ``ffn_gate_exps``
and ``ffn_up_exps`` read) and Σh² of its intermediate activation h = act(x·W_gateᵀ)·(x·W_upᵀ)
(what ``ffn_down_exps`` reads), and the number of tokens routed to it; Σx² over every token for the
router (``ffn_gate_inp``, a dense matmul in llama.cpp).
"""
from __future__ import annotations

import torch

from engine.models import ExpertsLayer
from engine.stats import all_reduce_count


class RoutedSquareSums:
    def __init__(self, layer: ExpertsLayer, device: torch.device | str = "cpu") -> None:
        self.layer = layer
        zeros = {"dtype": torch.float64, "device": device}
        self.inputs = torch.zeros(layer.experts, layer.hidden, **zeros)
        self.intermediate = torch.zeros(layer.experts, layer.intermediate, **zeros)
        self.counts = torch.zeros(layer.experts, dtype=torch.int64, device=device)
        self.router = torch.zeros(layer.hidden, **zeros)
        self.tokens = 0

    def update(self, x: torch.Tensor, routing: torch.Tensor, _weights=None, _tokens=None) -> None:
        if x.shape[0] == 0:
            return
        self.tokens += x.shape[0]
        squares = x.to(torch.float32).square()
        self.router += squares.sum(0).to(self.router)
        routing = routing.to(torch.int64)
        routed = torch.zeros(x.shape[0], self.layer.experts, dtype=torch.float32, device=x.device).scatter_(1, routing, 1.0)
        self.inputs += (routed.T @ squares).to(self.inputs)
        self.counts += routed.sum(0).to(self.counts)
        self._intermediate(x, routing)

    def _intermediate(self, x: torch.Tensor, routing: torch.Tensor) -> None:
        """Each expert's h over its tokens, as its eager forward computes it. Splitting the tokens
        by expert needs their count on the host: one synchronisation per batch and MoE block."""
        flat = routing.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token_of = order // routing.shape[1]
        sizes = torch.bincount(flat, minlength=self.layer.experts).tolist()
        start = 0
        for expert, size in enumerate(sizes):
            if size:
                hidden = self.layer.intermediate_of(expert, x.index_select(0, token_of[start:start + size]))
                self.intermediate[expert] += hidden.to(torch.float32).square().sum(0).to(self.intermediate)
            start += size

    def all_reduce(self, group=None) -> RoutedSquareSums:
        for total in (self.inputs, self.intermediate, self.counts, self.router):
            torch.distributed.all_reduce(total, torch.distributed.ReduceOp.SUM, group)
        self.tokens = all_reduce_count(self.tokens, self.inputs.device, group)
        return self
