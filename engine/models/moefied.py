"""A mixture of experts with real weights, made here from the builtin Gemma 3 270M (MoEfication,
Zhang et al. 2022), so that what a starved expert costs can be measured on a model that has learned
something (random-weight MoEs answer correctness only).

Each block's MLP neurons (its 2,048 intermediate channels) are split: the ``SHARED`` of largest mean
contribution become a shared expert every token runs (plain Linear layers, as Qwen2-MoE's and
DeepSeek-MoE's), the rest ``EXPERTS`` routed experts of equal size, grouped by clustering what they
do on a corpus (balanced k-means of each neuron's |activation| over the corpus's tokens). A linear
router per block is fitted (ridge regression, from the MLP's input) to predict each expert's
activation norm; the ``TOP_K`` it predicts largest run, each with weight 1. With every expert running
it computes exactly the dense MLP (shared and experts partition the neurons); with top-k it drops
the others, which costs perplexity: Gemma's GELU MLP is not sparse, so the model is much worse than
the dense one (measured: docs/schemes.md), yet its experts are real weights that see different tokens. It is
not a released model, and its name says so: ``builtin:gemma-3-270m-moe``. The fit is made once on
the builtin ``mixed`` corpus's train split in float32 and cached beside the builtin weights, keyed
by them; the experts are stored as transformers 5 stores fused experts (``gate_up_proj`` [E, 2I, H],
gate rows first; ``down_proj`` [E, H, I]), so every MoE code path of calibscope reads them as it
reads Qwen-MoE's.
"""
from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.models import weight_cache
from engine.models.builtin import BUILTIN_MODELS
from engine.progress import Progress, no_progress

NAME = "builtin:gemma-3-270m-moe"
DENSE = "builtin:gemma-3-270m"
SHARED, EXPERTS, TOP_K = 1024, 16, 4  # of the MLP's 2,048 neurons: 1,024 always on, the rest in 16 experts of 64, top-4
FIT_WINDOWS, FIT_LENGTH = 32, 256  # 8,192 corpus tokens: what the clustering and the routers are fitted on
RIDGE = 1e-3  # of the mean diagonal of XᵀX: keeps the router fit well posed
FILE = "moefication.safetensors"
DESCRIPTION = (f"Gemma 3 270M made MoE here: per block a shared expert of {SHARED} of its MLP neurons and "
               f"{EXPERTS} routed experts of the rest, top-{TOP_K} (MoEfication; constructed, not a released model)")


class MoefiedExperts(nn.Module):
    """The experts of one block, fused as transformers 5 stores them, called as
    ``experts(hidden_states, top_k_index, top_k_weights)``."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, act_fn: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(gate_up, requires_grad=False)
        self.down_proj = nn.Parameter(down, requires_grad=False)
        self.act_fn = act_fn

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        output = torch.zeros_like(hidden_states)
        for expert in range(self.gate_up_proj.shape[0]):
            token, slot = torch.where(top_k_index == expert)
            if token.numel() == 0:
                continue
            gate, up = nn.functional.linear(hidden_states[token], self.gate_up_proj[expert]).chunk(2, dim=-1)
            out = nn.functional.linear(self.act_fn(gate) * up, self.down_proj[expert])
            output.index_add_(0, token, (out * top_k_weights[token, slot, None]).to(output.dtype))
        return output


class SharedExpert(nn.Module):
    """The neurons every token runs (a shared expert, as Qwen2-MoE and DeepSeek-MoE have): a dense gated MLP of Linear layers."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, act_fn: nn.Module) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = (_linear(weight) for weight in (gate, up, down))
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MoefiedMLP(nn.Module):
    """A block's MLP as its shared expert plus a router over experts: the top-k by predicted
    activation norm, each added with weight 1 (the experts partition the neurons)."""

    def __init__(self, shared: SharedExpert, router: nn.Linear, experts: MoefiedExperts, top_k: int) -> None:
        super().__init__()
        self.shared_expert, self.router, self.experts, self.top_k = shared, router, experts, top_k

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        index = self.router(flat).topk(self.top_k, dim=-1).indices
        weights = torch.ones(index.shape, dtype=flat.dtype, device=flat.device)
        return (self.shared_expert(flat) + self.experts(flat, index, weights)).reshape(hidden_states.shape)


def _linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype, device=weight.device)
    linear.weight.data = weight
    return linear


def moefied(model: nn.Module, fit: dict[str, torch.Tensor], top_k: int = TOP_K) -> nn.Module:
    """``model`` (a dense Gemma 3) with each block's MLP replaced by its experts and router, in place."""
    for index, layer in enumerate(model.model.layers):
        mlp, shared, groups = layer.mlp, fit[f"{index}.shared"], fit[f"{index}.groups"]
        gate, up, down = (projection.weight.detach() for projection in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        gate_up = torch.stack([torch.cat([gate[group], up[group]]) for group in groups])
        experts = MoefiedExperts(gate_up, torch.stack([down[:, group] for group in groups]), mlp.act_fn)
        shared_expert = SharedExpert(gate[shared], up[shared], down[:, shared].contiguous(), mlp.act_fn)
        layer.mlp = MoefiedMLP(shared_expert, _linear(fit[f"{index}.router"].to(gate)), experts, top_k)
    model.config.num_experts_per_tok, model.config.num_experts = top_k, len(fit["0.groups"])  # what MoE reports read
    return model


def _fit_tokens(tokenizer) -> torch.Tensor:
    """[FIT_WINDOWS, FIT_LENGTH] windows of the builtin mixed corpus's train split, each starting with BOS."""
    from engine.corpus import builtin_documents

    text = "\n\n".join(document for document, _ in builtin_documents("mixed", "train"))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: FIT_WINDOWS * (FIT_LENGTH - 1)]
    windows = torch.tensor(ids).view(FIT_WINDOWS, FIT_LENGTH - 1)
    bos = torch.full((FIT_WINDOWS, 1), tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos, windows], dim=1)


def balanced_groups(features: np.ndarray, groups: int, seed: int = 0) -> np.ndarray:
    """[groups, n / groups] row indices: k-means centres, then each row assigned to a centre with room
    (an optimal assignment with every centre taking exactly n / groups rows)."""
    from scipy.optimize import linear_sum_assignment  # imported when a fit is made (once), not with the engine
    from sklearn.cluster import KMeans

    rows = features.shape[0]
    size = rows // groups
    centres = KMeans(groups, n_init=4, random_state=seed).fit(features).cluster_centers_
    # [rows, groups] squared distances
    cost = (features**2).sum(1)[:, None] - 2 * features @ centres.T + (centres**2).sum(1)[None]
    _, slots = linear_sum_assignment(np.repeat(cost, size, axis=1))
    return np.stack([np.sort(np.flatnonzero(slots // size == group)) for group in range(groups)])


def fit_moefication(model: nn.Module, tokenizer, shared: int = SHARED, experts: int = EXPERTS,
                    progress: Progress = no_progress) -> dict[str, torch.Tensor]:
    """The shared neurons [S], the experts' neuron groups [E, (I - S) / E] and the router [E, H] of
    every block of a dense float32 Gemma 3. Shared: the neurons of largest mean contribution
    (mean |activation| times the norm of their down-projection column)."""
    tokens = _fit_tokens(tokenizer).to(next(model.parameters()).device)
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def hook(index: int):
        def record(module, args, _output):
            x = args[0].reshape(-1, args[0].shape[-1])
            seen.setdefault(index, []).append((x, module.act_fn(module.gate_proj(x)) * module.up_proj(x)))
        return record

    handles = [layer.mlp.register_forward_hook(hook(index)) for index, layer in enumerate(model.model.layers)]
    try:
        with torch.inference_mode():
            for start in range(0, len(tokens), 8):
                model.model(input_ids=tokens[start:start + 8], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    fit = {}
    for index, parts in seen.items():
        x = torch.cat([part[0] for part in parts]).double()
        h = torch.cat([part[1] for part in parts]).double()
        down = model.model.layers[index].mlp.down_proj.weight.detach().double()
        contribution = h.abs().mean(0) * down.norm(dim=0)
        order = contribution.argsort(descending=True).cpu()
        shared_neurons, routed = order[:shared].sort().values, order[shared:].sort().values
        magnitude = h[:, routed.to(h.device)].abs().T  # [neurons, tokens]: what each routed neuron does over the corpus
        features = (magnitude / magnitude.norm(dim=1, keepdim=True).clamp(min=1e-12)).cpu().numpy()
        groups = routed[torch.from_numpy(balanced_groups(features, experts))]
        targets = torch.stack([h[:, group].norm(dim=1) for group in groups.to(h.device)], dim=1)  # [tokens, E]
        xtx = x.T @ x
        ridge = RIDGE * xtx.diagonal().mean() * torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device)
        router = torch.linalg.solve(xtx + ridge, x.T @ targets).T  # [E, H]
        fit[f"{index}.shared"], fit[f"{index}.groups"], fit[f"{index}.router"] = shared_neurons, groups, router.float().cpu()
        progress((index + 1) / len(seen), f"MoEfication: block {index + 1} of {len(seen)}")
    return fit


def cached_fit(dense_loader, progress: Progress = no_progress) -> tuple[dict[str, torch.Tensor], bool]:
    """The fit, made once (on a float32 copy of the dense model ``dense_loader()`` returns: (model,
    tokenizer)) and cached; whether it came from the cache."""
    key = f"gemma-3-270m-moe-s{SHARED}-e{EXPERTS}-{BUILTIN_MODELS[DENSE].cache_key()}-v1"
    existing = weight_cache.complete_entry(key)
    if existing is not None:
        return load_file(existing / FILE), True
    model, tokenizer = dense_loader()
    fit = fit_moefication(model, tokenizer, SHARED, EXPERTS, progress=progress)
    with weight_cache.building_entry(key, {"model": NAME, "shared": SHARED, "experts": EXPERTS,
                                           "fit_tokens": FIT_WINDOWS * FIT_LENGTH}) as staging:
        save_file({name: tensor.contiguous() for name, tensor in fit.items()}, str(staging / FILE))
    return fit, False
