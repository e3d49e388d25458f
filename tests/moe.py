"""Independent references for MoE routing on the tiny random MoE models: the router's own top-k,
one sequence at a time (no padding), and a way to starve one expert of every token."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from engine.hooks import observing


def routed_tokens(loaded, calibration, experts_name: str, router_name: str, top_k: int):
    """(x [tokens, hidden] float64 at the experts' input, chosen experts [tokens, top_k] from
    top-k of x·Wᵀ + b of the router, calibration row of each token)."""
    modules = dict(loaded.model.named_modules())
    experts, router = modules[experts_name], modules[router_name]
    seen, rows = [], []
    with observing([(experts, "input", lambda t: seen.append(t.reshape(-1, t.shape[-1]).double()))]), torch.no_grad():
        for row, sequence in enumerate(calibration.sequences):
            loaded.model(input_ids=torch.from_numpy(sequence)[None])
            rows += [row] * len(sequence)
    x = torch.cat(seen)
    bias = getattr(router, "bias", None)
    logits = x @ router.weight.double().T + (bias.double() if isinstance(bias, torch.Tensor) else 0.0)
    chosen = torch.topk(logits, top_k, dim=1).indices
    return x, chosen, torch.tensor(rows)


@contextmanager
def starved(experts_module, starved_expert: int = 3):
    """Every token routed to ``starved_expert`` goes to the lowest expert below 3 not already chosen."""

    def reroute(_module, args, kwargs):
        hidden, index, weights = args
        index = index.clone()
        for row in range(index.shape[0]):
            if starved_expert in index[row].tolist():
                free = min(set(range(3)) - set(index[row].tolist()))
                index[row][index[row] == starved_expert] = free
        return (hidden, index, weights), kwargs

    handle = experts_module.register_forward_pre_hook(reroute, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
