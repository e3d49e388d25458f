"""The MoE made from a dense Gemma 3 (engine/models/moefied.py): its experts partition the MLP, its
routers come from the fit, and calibscope reads it as any fused-experts MoE."""
from __future__ import annotations

import copy

import datasets
import numpy as np
import pytest
import torch

from engine import ModelSpec, load_model
from engine.errors import ModelLoadError
from engine.models import moefied
from engine.models.layers import find_experts
from engine.models.loading import checkpoint_folder
from engine.models.size import is_packaged
from engine.models.tiny import build_tiny
from engine.quant import QuantSpec, WeightSpec, quantize, quantized
from engine.sampling import RandomSpec, build
from engine.stats.experts import ExpertSpec, collect_expert_stats

SHARED, EXPERTS = 16, 4  # of the tiny Gemma's 48 neurons: 16 shared, 4 experts of 8


@pytest.fixture(scope="module")
def dense():
    model, tokenizer = build_tiny("tiny-random-gemma3")
    return model.float().eval(), tokenizer


@pytest.fixture(scope="module")
def fit(dense):
    return moefied.fit_moefication(*dense, shared=SHARED, experts=EXPERTS)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_balanced_groups_partition_the_rows_in_equal_groups_and_find_the_clusters():
    generator = np.random.default_rng(0)
    centres = generator.normal(size=(3, 5)) * 10
    features = np.concatenate([centre + generator.normal(size=(6, 5)) for centre in centres])
    groups = moefied.balanced_groups(features, 3)
    assert groups.shape == (3, 6) and sorted(groups.ravel().tolist()) == list(range(18))
    assert sorted(tuple(group) for group in groups) == [tuple(range(c * 6, c * 6 + 6)) for c in range(3)]


def test_the_fit_splits_every_blocks_neurons_into_shared_and_equal_experts(dense, fit):
    model, _ = dense
    for index in range(len(model.model.layers)):
        shared, groups, router = fit[f"{index}.shared"], fit[f"{index}.groups"], fit[f"{index}.router"]
        assert groups.shape == (EXPERTS, (48 - SHARED) // EXPERTS) and router.shape == (EXPERTS, 32)
        assert sorted(torch.cat([shared, groups.ravel()]).tolist()) == list(range(48))


def test_with_every_expert_running_it_computes_the_dense_model(dense, fit):
    model, _ = dense
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    every = moefied.moefied(copy.deepcopy(model), fit, top_k=EXPERTS)
    torch.testing.assert_close(logits(every, ids), logits(model, ids), rtol=1e-5, atol=1e-5)
    routed = moefied.moefied(copy.deepcopy(model), fit, top_k=1)
    assert not torch.allclose(logits(routed, ids), logits(model, ids), atol=1e-3)  # top-1 drops neurons


def test_the_router_picks_the_experts_that_matter_more_often_than_chance(dense, fit):
    """On the fit's own tokens, the router's top-1 is the expert of largest activation norm more often
    than a uniform guess (1 / E)."""
    model, tokenizer = dense
    routed = moefied.moefied(copy.deepcopy(model), fit, top_k=1)
    seen = {}
    mlp = routed.model.layers[1].mlp
    handle = mlp.register_forward_hook(lambda module, args, _out: seen.update(x=args[0].reshape(-1, args[0].shape[-1])))
    with torch.inference_mode():
        routed.model(input_ids=moefied._fit_tokens(tokenizer)[:4])
        handle.remove()
        x = seen["x"]
        layer = find_experts(routed)[1]
        norms = torch.stack([layer.intermediate_of(e, x).norm(dim=-1) for e in range(EXPERTS)], dim=1)
        agreement = (mlp.router(x).argmax(-1) == norms.argmax(-1)).float().mean().item()
    assert agreement > 1.5 / EXPERTS


def test_calibscope_reads_it_as_a_fused_experts_moe_and_quantizes_its_experts(dense, fit):
    model, _ = dense
    routed = moefied.moefied(copy.deepcopy(model), fit, top_k=2)
    layers = find_experts(routed)
    assert [layer.name for layer in layers] == [f"model.layers.{i}.mlp.experts" for i in range(4)]
    assert all(layer.router == layer.name.replace("experts", "router") and layer.experts == EXPERTS for layer in layers)
    loaded = load_model(ModelSpec("tiny-random-gemma3", dtype="float32"))
    loaded.model.model.layers = routed.model.layers
    loaded.model.config.num_experts_per_tok = 2
    texts = [f"{i}: " + "the shared neurons and the experts " * (i + 2) for i in range(4)]
    data = datasets.Dataset.from_dict({"text": texts, "source": ["t"] * 4, "row_id": list(range(4))})
    calibration = build(data, loaded.tokenizer, RandomSpec(nsamples=4, length=64))
    report = collect_expert_stats(loaded, calibration, ExpertSpec(batch_size=2))
    counts = report.routing.groupby("layer")["tokens"].sum()
    assert (counts == 2 * int(calibration.lengths.sum())).all()  # top-2: every token reaches two experts
    plan, table = quantize(loaded, QuantSpec(WeightSpec("rtn", 4, 8)))
    assert set(plan.experts) == {f"model.layers.{b}.mlp.experts.{p}_proj" for b in range(4) for p in ("gate_up", "down")}
    assert "model.layers.0.mlp.shared_expert.down_proj" in set(table["layer"])  # the shared expert: plain Linear layers
    assert all("router" not in name for name in table["layer"])  # routers stay float
    with quantized(loaded, plan):
        assert torch.isfinite(logits(loaded.model, calibration.input_ids[:1])).all()


def test_the_fit_is_made_once_and_then_read_from_the_cache(dense, fit, monkeypatch, tmp_path):
    monkeypatch.setenv("CALIBSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(moefied, "SHARED", SHARED)
    monkeypatch.setattr(moefied, "EXPERTS", EXPERTS)
    made, cached = moefied.cached_fit(lambda: dense)
    again, cached_again = moefied.cached_fit(lambda: pytest.fail("a cached fit loads no dense model"))
    assert (cached, cached_again) == (False, True) and made.keys() == again.keys() == fit.keys()
    assert all(torch.equal(made[name], again[name]) and torch.equal(made[name], fit[name]) for name in fit)


def test_the_builtin_moe_loads_as_a_packaged_model_with_its_cached_fit(monkeypatch):
    """The loader's wiring, with a fit made up here (the real one is minutes on the 270M model)."""
    def made_up(dense_loader, progress):
        model, _ = dense_loader()
        neurons = model.model.layers[0].mlp.gate_proj.weight.shape[0]
        order = torch.arange(neurons)
        fit = {}
        for index in range(len(model.model.layers)):
            fit[f"{index}.shared"] = order[: neurons // 2]
            fit[f"{index}.groups"] = order[neurons // 2:].view(moefied.EXPERTS, -1)
            fit[f"{index}.router"] = torch.randn(moefied.EXPERTS, model.config.hidden_size)
        return fit, True

    monkeypatch.setattr(moefied, "cached_fit", made_up)
    loaded = load_model(ModelSpec(moefied.NAME, dtype="float32"))
    assert is_packaged(moefied.NAME) and "constructed" in loaded.info.source
    assert len(find_experts(loaded.model)) == loaded.model.config.num_hidden_layers
    assert loaded.model.config.num_experts_per_tok == moefied.TOP_K
    with pytest.raises(ModelLoadError, match="built in memory"):
        checkpoint_folder(ModelSpec(moefied.NAME), lambda *_: None)
