"""AWQ: held to an independent transcription of llm-compressor 0.14's AWQModifier (its grid, weight
means, per-point fake quantization with compressed-tensors' own min-max grid, loss on the parent's
output, the sequential pipeline's block order) on tiny Llama and GPT-2 layouts, and AutoAWQ's clip
search; the mappings found from the model against the ones llm-compressor registers; the rescaled
float model equals the original; the checkpoint holds what was measured."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from compressed_tensors.quantization.utils import calculate_qparams
from transformers import LlamaConfig, LlamaForCausalLM

from engine import ModelSpec, load_model
from engine.errors import SpecError
from engine.export import save_quantized
from engine.export.verify import changed_floats, dequantized_layers
from engine.models import from_model
from engine.models.tiny import byte_tokenizer
from engine.quant import PRESETS, Calibrated, QuantSpec, WeightSpec, perplexity, quantize, quantized
from engine.quant.apply import QuantizedModel
from engine.quant.methods import awq_pass
from engine.quant.methods.awq import best_clips, grid_points, group_blocks, weight_means
from engine.quant.methods.awq_pass import awq_mappings, awq_scaling, chunk_width, merged_calls, search_awq_scaling
from engine.quant.methods.scaling import float_change
from engine.quant.plan import quantizable_layers
from engine.quant.specs import ActivationSpec, AwqScaling, AwqSpec
from engine.sampling import RandomSpec, build
from tests.test_checkpoint import corpus, windows

AWQ = PRESETS["W4 g128 AWQ"]


def mha_llama(dtype: torch.dtype = torch.float32):
    """A random Llama with as many key/value heads as query heads (v_proj feeds o_proj channel for
    channel), widths that take groups of 128."""
    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():  # outlier channels, as trained models have: AWQ has something to find
        for layer in model.model.layers:
            layer.input_layernorm.weight[::17] *= 8
            layer.post_attention_layernorm.weight[::23] *= 6
    return from_model(model, tokenizer, "mha-llama")


@pytest.fixture(scope="module")
def model():
    return mha_llama()


@pytest.fixture(scope="module")
def calibration(model):
    return build(corpus(), model.tokenizer, RandomSpec(nsamples=8, length=96, seed=0))  # lengths differ: padded batches


# --- llm-compressor 0.14, transcribed from modifiers/transform/awq/base.py ----------------------------------

def their_grid(n_grid, duo_scaling):
    match duo_scaling:
        case "both":
            n_grid = int(n_grid / 2)
            return [(grid_idx / (n_grid - 1), duo_scaling) for grid_idx in range(n_grid) for duo_scaling in [False, True]]
        case False:
            return [(grid_idx / (n_grid - 1), False) for grid_idx in range(n_grid)]
        case True:
            return [(0.0, False)] + [(grid_idx / (n_grid - 2), True) for grid_idx in range(n_grid - 1)]


def their_layer_means(weights, group_size):
    weight_total_count, weight_total_sum = 0, 0
    for weight in weights:
        weight = weight.clone()
        orig_shape = weight.shape
        weight = weight.reshape(-1, group_size)
        weight.abs_()
        weight.div_(weight.amax(dim=1, keepdim=True) + 1e-6)
        weight = weight.reshape(orig_shape)
        weight_total_count += weight.size(0)
        weight_total_sum += weight.sum(0, dtype=torch.float64)
    return weight_total_sum / weight_total_count


ARGS = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=128)


def their_quantize(weight):
    """QuantizationModifier's W4A16_ASYM weight: memoryless min-max per group, calculate_qparams, fake_quantize."""
    grouped = weight.unflatten(-1, (-1, ARGS.group_size))
    scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), ARGS)
    return fake_quantize(weight, scale.to(weight.dtype), zero, ARGS)


def their_loss(fp16_outputs, int_w_outputs):
    loss, num_elements = 0.0, 0
    for fp16_batch, int_w_batch in zip(fp16_outputs, int_w_outputs):
        loss += torch.nn.functional.mse_loss(fp16_batch, int_w_batch, reduction="sum")
        num_elements += fp16_batch.numel()
    return (loss / num_elements).item()


def llm_compressor_awq(loaded, calibration, mappings):
    """The sequential pipeline (one sample per batch, as oneshot's default) on a copy of the model:
    per block, a calibration run caching each parent's calls and Σ|x| of its first balance layer,
    then each mapping's grid search and smoothing, then the next block. ``mappings``: (smooth,
    balance layers, parent) names. Returns the chosen scales per smooth layer, every point's loss, and
    the final quantized weights of every Linear but the head."""
    model = copy.deepcopy(loaded.model)
    modules = dict(model.named_modules())
    chosen, losses = {}, {}
    blocks = sorted({int(balance[0].split(".")[2]) for _, balance, _ in mappings})
    for block in blocks:
        mine = [mapping for mapping in mappings if int(mapping[1][0].split(".")[2]) == block]
        calls = {parent: [] for _, _, parent in mine}
        sums = {}
        handles = [modules[parent].register_forward_pre_hook(
            lambda _m, args, kwargs, parent=parent, calls=calls: calls[parent].append((args, kwargs)), with_kwargs=True)
            for parent in calls]
        for smooth, balance, _ in mine:
            def cache(_m, args, _out, smooth=smooth, sums=sums):
                activations = args[0].abs().detach().flatten(0, -2)
                total, count = sums.get(smooth, (0, 0))
                sums[smooth] = (total + activations.float().sum(dim=0), count + activations.size(0))
            handles.append(modules[balance[0]].register_forward_hook(cache))
        with torch.no_grad():
            for sequence in calibration.sequences:  # batch size 1: no padding anywhere
                model.model(input_ids=torch.as_tensor(sequence).view(1, -1), use_cache=False)  # its disable_cache
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for smooth, balance, parent in mine:
                parent_module, layers = modules[parent], [modules[name] for name in balance]

                def run(parent_module=parent_module, calls=calls, parent=parent):
                    outputs = [parent_module(*args, **kwargs) for args, kwargs in calls[parent]]
                    return [output[0] if isinstance(output, tuple) else output for output in outputs]

                fp16_outputs = run()
                orig = {layer: layer.weight.clone() for layer in layers}
                x_sum, count = sums[smooth]
                x_mean = x_sum / count
                w_mean = their_layer_means([layer.weight for layer in layers], 128)
                history, best_error, best_scales = [], float("inf"), None
                for ratio, use_duo_scaling in their_grid(20, True):
                    if use_duo_scaling:
                        scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
                    else:
                        scales = x_mean.pow(ratio).clamp(min=1e-4).view(-1)
                    scales = scales / (scales.max() * scales.min()).sqrt()
                    scales[torch.isinf(scales)] = 1
                    scales[torch.isnan(scales)] = 1
                    view = scales.view(1, -1)
                    for layer in layers:  # W · s copied into the parameter (its dtype), Q(W · s) / s back in it
                        scaled = (orig[layer] * view).to(orig[layer].dtype)
                        layer.weight.data = (their_quantize(scaled) / view).to(orig[layer].dtype)
                    loss = their_loss(fp16_outputs, run())
                    history.append(loss)
                    if loss < best_error:
                        best_error, best_scales = loss, scales.clone()
                chosen[smooth], losses[smooth] = best_scales.float(), torch.tensor(history)
                for layer in layers:
                    layer.weight.data = (orig[layer] * best_scales.view(1, -1)).to(orig[layer].dtype)
                smoothing = modules[smooth]
                if smoothing.weight.ndim == 1:
                    smoothing.weight.div_(best_scales)
                else:
                    smoothing.weight[-best_scales.size(0):].div_(best_scales.view(-1, 1))
                if getattr(smoothing, "bias", None) is not None:
                    smoothing.bias.div_(best_scales)
    final = {name: their_quantize(module.weight.detach()) for name, module in modules.items()
             if isinstance(module, torch.nn.Linear) and name != "lm_head"}
    return chosen, losses, final


# --- the tests -------------------------------------------------------------------------------------------------

def test_the_grid_and_weight_means_are_llm_compressors():
    for setting, ours in ((True, AwqScaling.DUO), (False, AwqScaling.INPUTS), ("both", AwqScaling.BOTH)):
        assert grid_points(20, ours) == [(ratio, bool(duo)) for ratio, duo in their_grid(20, setting)]
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(48, 256, generator=generator), torch.randn(16, 256, generator=generator) * 3]
    assert torch.allclose(weight_means(weights, 128), their_layer_means(weights, 128), rtol=1e-12, atol=0)


def test_the_mappings_are_the_ones_llm_compressor_registers_where_it_has_them():
    """Llama (default_mappings), Gemma 3 (_gemma3_mappings: no input_layernorm -> q/k/v, v -> o only where
    widths match), GPT-2 layout: found from the model, not from names."""
    def found(loaded, spec=AwqSpec(renormalized=False)):
        return [(m.source, m.layers, m.parent) for m in awq_mappings(loaded, quantizable_layers(loaded.model, AWQ), spec)
                if m.layers[0].split(".")[-3 if "transformer" in m.layers[0] else 2] in ("0",)]

    block = "model.layers.0"
    assert found(mha_llama()) == [
        (f"{block}.input_layernorm", tuple(f"{block}.self_attn.{p}_proj" for p in "qkv"), f"{block}.self_attn"),
        (f"{block}.self_attn.v_proj", (f"{block}.self_attn.o_proj",), f"{block}.self_attn.o_proj"),
        (f"{block}.post_attention_layernorm", (f"{block}.mlp.gate_proj", f"{block}.mlp.up_proj"), f"{block}.mlp"),
        (f"{block}.mlp.up_proj", (f"{block}.mlp.down_proj",), f"{block}.mlp.down_proj")]
    gemma = load_model(ModelSpec("tiny-random-gemma3", dtype="float32"))  # grouped-query attention: v -> o does not fit
    assert found(gemma) == [
        (f"{block}.pre_feedforward_layernorm", (f"{block}.mlp.gate_proj", f"{block}.mlp.up_proj"), f"{block}.mlp"),
        (f"{block}.mlp.up_proj", (f"{block}.mlp.down_proj",), f"{block}.mlp.down_proj")]
    assert found(gemma, AwqSpec())[0][0] == f"{block}.input_layernorm"  # by default, q/k/v under q_norm / k_norm too
    gpt2 = load_model(ModelSpec("tiny-random-gpt2", dtype="float32"))
    attention = "transformer.h.0.attn"
    assert found(gpt2) == [("transformer.h.0.ln_1", (f"{attention}.c_attn",), f"{attention}.c_attn"),
                           (f"{attention}.c_attn", (f"{attention}.c_proj",), f"{attention}.c_proj"),  # its v rows
                           ("transformer.h.0.ln_2", ("transformer.h.0.mlp.c_fc",), "transformer.h.0.mlp.c_fc")]


def test_awq_equals_a_transcription_of_llm_compressor(model, calibration):
    """On W4A16_ASYM. On W4A16 the two agree only up to ties: a symmetric min-max grid puts each group's
    largest |w| at ±7.5 steps, so the last bit of W · s (x̄ summed per batch here, per sample there)
    decides whether a negative extreme rounds to -7 or -8; here the points' losses then differ by up
    to 2.2% (the identity's, with no W · s to round, not at all) and two of the first block's four
    mappings choose another point."""
    spec = replace(PRESETS["W4 g128 AWQ asym (vLLM)"], awq=AwqSpec(batch_size=3))  # padded batches, points cut short
    layers = quantizable_layers(model.model, spec)
    result = awq_scaling(model, calibration, spec, layers)
    mappings = [(m.source, m.layers, m.parent) for m in result.scaling.mappings]
    assert len(mappings) == 8  # four per block, as llm-compressor's default_mappings
    theirs, their_losses, their_weights = llm_compressor_awq(model, calibration, mappings)
    for source, balance, _ in mappings:
        # x̄ summed per batch of 8 here, per sample there: W · s can differ in its last bit, and a code at a
        # rounding tie then flips (one point of the 160 moves by 0.1%)
        ours, measured = result.losses[source], ~torch.isnan(result.losses[source])
        assert torch.allclose(ours[measured], their_losses[source][measured].double(), rtol=2e-3, atol=1e-9), source
        assert (their_losses[source][~measured] > their_losses[source].min()).all()  # cut short: beaten already
        assert torch.allclose(result.scaling.scales[balance[0]].double(), theirs[source].double(), rtol=1e-5, atol=0), source
    assert result.mappings["points_cut_short"].sum() > 20  # the search skipped work and chose the same
    moved = [float(result.scaling.scales[balance[0]].max()) for _, balance, _ in mappings]
    assert max(moved) > 1.5  # the search chose real scalings, not only the identity
    plan, table = quantize(model, spec, Calibrated(samples=calibration))
    for name, weight in their_weights.items():
        ours = plan.weights[name]
        assert torch.allclose(ours, weight, atol=1e-5 * float(weight.abs().max())), name
    assert table["output_error"].notna().all() and (table["awq_error_best"] <= table["awq_error_identity"]).all()


def padded_calls(lengths, hidden=8, batch=2):
    """Recorded calls parent(x) of ``batch`` sequences each, padded at the end, and their masks."""
    generator = torch.Generator().manual_seed(0)
    calls, masks = [], []
    for start in range(0, len(lengths), batch):
        group = lengths[start:start + batch]
        masks.append(torch.arange(max(group)).view(1, -1) < torch.tensor(group).view(-1, 1))
        calls.append(((torch.randn(len(group), max(group), hidden, generator=generator),), {}))
    return calls, masks


class Cumulative(torch.nn.Module):
    """Called like an MLP, but each token's output reads the ones before (as a recurrent mixer does)."""

    def forward(self, x):
        return x.cumsum(dim=1)


def test_a_token_wise_parent_runs_on_its_real_tokens_merged():
    assert chunk_width([250] * 32) == 500  # 8,000 tokens: 16 chunks
    assert chunk_width([1024] * 16) == 1024  # never smaller products than the calls'
    assert chunk_width([250] * 256) == 512
    calls, masks = padded_calls([5, 9, 3, 7, 100, 50, 90, 80, 2] * 20)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    with torch.no_grad():
        targets = [mlp(*args) for args, _ in calls]
        merged, merged_targets, merged_masks = merged_calls(mlp, calls, targets, masks)
        real = torch.cat([target[mask] for target, mask in zip(targets, masks)])
        assert [call[0][0].shape[1] for call in merged] == [433] * 15 + [425]  # 6,920 real tokens: 16 chunks, no padding
        assert merged_masks == [None] * 16
        assert torch.allclose(torch.cat([target[0] for target in merged_targets]), real, atol=1e-6)
        assert torch.equal(torch.cat([call[0][0][0] for call in merged]),
                           torch.cat([args[0][mask] for (args, _), mask in zip(calls, masks)]))
        mixer = Cumulative()  # mixes tokens: merged outputs differ, the recorded calls stay
        targets = [mixer(*args) for args, _ in calls]
        assert merged_calls(mixer, calls, targets, masks)[0] is calls
    keyword_calls = [((), {"hidden_states": args[0]}) for args, _ in calls]  # as attention is called: not merged
    assert merged_calls(mlp, keyword_calls, targets, masks)[0] is keyword_calls


def test_merging_the_mlp_calls_changes_no_choice(model, calibration, monkeypatch):
    spec = replace(AWQ, awq=AwqSpec(batch_size=2))
    layers = quantizable_layers(model.model, spec)
    was_merged, merge = [], awq_pass.merged_calls

    def recording(parent, calls, targets, masks):
        result = merge(parent, calls, targets, masks)
        was_merged.append(result[0] is not calls)
        return result
    monkeypatch.setattr(awq_pass, "merged_calls", recording)
    merged = search_awq_scaling(model, calibration, spec, layers)
    assert was_merged == [False, True] * 2  # per block: the attention (called with keywords), the MLP
    recorded = search_awq_scaling(model, calibration, spec, layers, merge_calls=False)
    assert was_merged == [False, True] * 2  # merge_calls=False: merged_calls is not called at all
    assert merged.mappings["grid_index"].tolist() == recorded.mappings["grid_index"].tolist()
    for source, losses in recorded.losses.items():
        measured = ~torch.isnan(losses) & ~torch.isnan(merged.losses[source])
        assert torch.allclose(merged.losses[source][measured], losses[measured], rtol=1e-4), source


@pytest.mark.parametrize("name", ["tiny-random-gemma3", "tiny-random-llama", "tiny-random-gpt2"])
def test_the_rescaled_float_model_is_the_original(name):
    loaded = load_model(ModelSpec(name, dtype="float32"))
    calibration = build(corpus(), loaded.tokenizer, RandomSpec(nsamples=8, length=64, seed=0))
    spec = PRESETS["W4 g128 AWQ + clip"]
    result = awq_scaling(loaded, calibration, spec, quantizable_layers(loaded.model, spec))
    scaling = result.scaling
    unclipped = copy.copy(scaling)
    unclipped.clips = {}
    assert float_change(loaded, unclipped) < 1e-5
    assert scaling.clips and all(torch.isfinite(clip).all() for clip in scaling.clips.values())
    assert not any(key.endswith(("q_proj", "k_proj")) for key in scaling.clips)  # AutoAWQ does not clip them


def autoawq_best_clip(w, input_feat, quantize, group_size, n_grid=20, max_shrink=0.5):
    """AutoAWQ 0.2.9's _compute_best_clip (one output batch), its quantizer passed in."""
    org_w_shape = w.shape
    input_feat = input_feat.view(-1, input_feat.shape[-1])
    input_feat = input_feat.reshape(1, input_feat.shape[0], -1, group_size)
    w = w.reshape(org_w_shape[0], 1, -1, group_size)
    org_max_val = w.abs().amax(dim=-1, keepdim=True)
    best_max_val = org_max_val.clone()
    min_errs = torch.ones_like(org_max_val) * 1e9
    org_out = (input_feat * w).sum(dim=-1)
    for i_s in range(int(max_shrink * n_grid)):
        max_val = org_max_val * (1 - i_s / n_grid)
        cur_w = torch.clamp(w, -max_val, max_val)
        q_w = quantize(cur_w.reshape(org_w_shape)).reshape(w.shape)
        cur_out = (input_feat * q_w).sum(dim=-1)
        err = (cur_out - org_out).pow(2).mean(dim=1).view(min_errs.shape)
        cur_best_idx = err < min_errs
        min_errs[cur_best_idx] = err[cur_best_idx]
        best_max_val[cur_best_idx] = max_val[cur_best_idx]
    return best_max_val.squeeze(1).squeeze(-1)


def test_the_clip_search_is_autoawqs_on_the_same_tokens():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 256, generator=generator)
    weight[:, 5] *= 6  # a wide group
    tokens = torch.randn(300, 256, generator=generator) * torch.rand(256, generator=generator) * 3
    spec = WeightSpec("rtn", 4, 128, symmetric=False)
    ours = best_clips(weight, group_blocks(tokens.T @ tokens, 128), spec)
    theirs = autoawq_best_clip(weight, tokens, lambda w: their_quantize(w), 128)
    assert torch.equal(ours, theirs)
    assert (ours < weight.abs().reshape(64, 2, 128).amax(-1)).float().mean() > 0.2  # it does clip


def test_awq_is_refused_where_it_does_not_apply():
    with pytest.raises(SpecError, match="integer grid"):
        QuantSpec(WeightSpec("rtn", format="nvfp4"), awq=AwqSpec())
    with pytest.raises(SpecError, match="weight-only"):
        QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8), awq=AwqSpec())
    with pytest.raises(SpecError, match="choose one"):
        QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, granularity="token"), smoothing=0.5, awq=AwqSpec())
    with pytest.raises(SpecError, match="grid"):
        AwqSpec(grid=2)
    assert QuantSpec(WeightSpec("rtn", 4, 128, symmetric=False), awq={"clip": True}).awq == AwqSpec(clip=True)


@pytest.mark.parametrize("preset", ["W4 g128 AWQ + clip", "W4 g128 AWQ asym (vLLM)"])
def test_the_checkpoint_holds_the_simulated_awq_model(preset, model, calibration, tmp_path):
    """pack-quantized (with zero points for the asymmetric preset), the rescaled norms and biases
    beside, in the model's dtype: read back with the package's decompressor (transformers cannot load
    asymmetric packed zero points), it is the simulation. (A symmetric AWQ checkpoint in the default
    bfloat16 runs in transformers: tests/test_checkpoint.py.)"""
    spec = PRESETS[preset]
    plan, _ = quantize(model, spec, Calibrated(samples=calibration))
    save_quantized(model, plan, spec, tmp_path / "awq", dtype="model")
    read_back = QuantizedModel(weights=dict(dequantized_layers(tmp_path / "awq")), floats=changed_floats(tmp_path / "awq", model))
    assert set(read_back.floats) == set(plan.floats) and len(plan.floats) == 4  # two norms per block
    for name, weight in read_back.weights.items():
        assert torch.equal(weight, plan.weights[name]), name
    evaluation = windows(model)
    with quantized(model, plan):
        simulated = perplexity(model, evaluation)
    with quantized(model, read_back):
        assert perplexity(model, evaluation) == pytest.approx(simulated, rel=1e-6)


def test_awq_runs_on_a_bfloat16_model(calibration):
    loaded = mha_llama(torch.bfloat16)
    plan, _ = quantize(loaded, AWQ, Calibrated(samples=calibration))
    assert all(weight.dtype == torch.bfloat16 for weight in plan.weights.values())
    assert float_change(loaded, awq_scaling(loaded, calibration, AWQ, quantizable_layers(loaded.model, AWQ)).scaling) < 5e-2
    with quantized(loaded, plan):
        assert perplexity(loaded, windows(loaded)) < float("inf")
