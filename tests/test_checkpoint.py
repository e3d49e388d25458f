"""Quantized checkpoints: what calibscope writes is what it measured. Each scheme is written as
compressed-tensors, read back by transformers (through the compressed-tensors package), and its
weights and perplexity compared with the simulated model's; the GPTQ format is unpacked by an
independent reader; folders are never overwritten and a failed write leaves nothing."""
from __future__ import annotations

import errno
import itertools
import json
from dataclasses import replace

import datasets
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from engine.errors import ExportError
from engine.export import CheckpointWriter, save_quantized
from engine.export import shards as shard_module
from engine.export.verify import dequantized_layers, largest_weight_difference, reloaded_divergence
from engine.models import from_model
from engine.models.tiny import byte_tokenizer
from engine.quant import (
    PRESETS,
    ActivationSpec,
    Calibrated,
    Quantization,
    QuantSpec,
    WeightSpec,
    evaluation_windows,
    perplexity,
    quantize,
    quantized,
)
from engine.quant.apply import QuantizedModel
from engine.quant.formats.grid import IntWeight
from engine.quant.methods.gptq import gptq
from engine.sampling import RandomSpec, build
from engine.stats import HessianSpec, StatsSpec, collect
from engine.stats.hessian_report import collect_hessians

TEXTS = [("Calibration data decides the quality of the quantized model. " * (1 + i % 4)) + f"Sample {i}." for i in range(40)]


def wide_llama(dtype: torch.dtype = torch.float32, tied: bool = False):
    """A random Llama whose layer widths (256, 512) take groups of 128 and int32 packing."""
    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return from_model(LlamaForCausalLM(config).to(dtype), tokenizer, "wide-llama")


@pytest.fixture(scope="module")
def model():
    return wide_llama()


def corpus():
    return datasets.Dataset.from_dict({"text": TEXTS, "source": ["doc"] * len(TEXTS), "row_id": list(range(len(TEXTS)))})


@pytest.fixture(scope="module")
def calibrated(model):
    calibration = build(corpus(), model.tokenizer, RandomSpec(nsamples=8, length=96, seed=0))
    stats = collect(model, calibration, StatsSpec(batch_size=4))
    hessians = collect_hessians(model, calibration, HessianSpec(batch_size=4, diagnostics="none"))
    return calibration, stats, hessians


def windows(loaded):
    return evaluation_windows(loaded.tokenizer, [text[::-1] for text in TEXTS], 128, 6, "held out")


def reloaded(folder, dtype=torch.float32):
    """transformers' own load; compressed-tensors decompresses the weights on the first forward."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    with torch.no_grad():
        model(torch.tensor([[1, 40, 41]]))
    return model


def dense_weights(model) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach() for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


SCHEMES = {
    "W4 g128 GPTQ static": QuantSpec(WeightSpec("gptq", 4, 128)),
    "W4 g128 GPTQ group-aware": QuantSpec(WeightSpec("gptq", 4, 128, act_order="group-aware")),
    "W4 per-channel GPTQ asymmetric": QuantSpec(WeightSpec("gptq", 4, 0, symmetric=False)),
    "W8 g128 RTN": QuantSpec(WeightSpec("rtn", 8, 128)),
    "W3 g128 RTN": QuantSpec(WeightSpec("rtn", 3, 128)),  # no vLLM scheme; transformers loads it
    "W3 g128 RTN asymmetric": QuantSpec(WeightSpec("rtn", 3, 128, symmetric=False)),
    "W8A8 static min/max": QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "minmax")),
    "W8A8 static p99.99": QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "percentile", 99.99)),
    "W8A8 static asymmetric": QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "minmax", symmetric=False)),
    # no vLLM kernel: compressed-tensors' own forward quantizes the inputs per token when transformers runs it
    "W4A4 int (A4 per token)": PRESETS["W4A4 int (A4 per token)"],
}


@pytest.mark.parametrize("label", list(SCHEMES))
def test_compressed_tensors_reloads_to_the_simulated_weights_and_perplexity(label, model, calibrated, tmp_path):
    """Written in float32, the dtype the model was quantized in (bfloat16 is the default: see
    test_a_float32_model_written_by_default_runs_in_transformers_as_simulated)."""
    spec = SCHEMES[label]
    _, stats, hessians = calibrated
    plan, _ = quantize(model, spec, Calibrated(stats=stats, hessians=hessians))
    summary = save_quantized(model, plan, spec, tmp_path / "out", dtype="float32")
    assert summary.quantized_layers == len(plan.weights) == 14
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == "float32" and summary.dtype == "float32"
    config = config["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["quantization_status"] == "compressed"
    assert config["ignore"] == ["lm_head"]
    assert largest_weight_difference(tmp_path / "out", plan.weights) == 0.0  # compressed-tensors' own decompressor
    evaluation = windows(model)
    with quantized(model, plan):
        simulated_ppl = perplexity(model, evaluation)
    if not spec.weights.symmetric:
        # transformers + compressed-tensors 0.20 refuse the packed zero points of any asymmetric pack-quantized
        # checkpoint, llm-compressor's included (llm-compressor issues 1618, 1704); vLLM reads them. Model-free:
        read_back = QuantizedModel(weights=dict(dequantized_layers(tmp_path / "out")), inputs=plan.inputs)
        with quantized(model, read_back):
            assert perplexity(model, evaluation) / simulated_ppl == pytest.approx(1.0, abs=1e-3)
        return
    back = reloaded(tmp_path / "out")
    weights = dense_weights(back)
    for name, simulated in plan.weights.items():
        assert torch.equal(weights[name], simulated), name  # float32: exactly the simulated weights
    reloaded_ppl = perplexity(from_model(back, model.tokenizer), evaluation)
    assert reloaded_ppl / simulated_ppl == pytest.approx(1.0, abs=1e-3)
    if spec.activations.enabled and not spec.activations.dynamic:  # the static input scales travel
        with safe_open(tmp_path / "out" / "model.safetensors", "pt") as opened:
            scale = opened.get_tensor("model.layers.0.mlp.down_proj.input_scale")
        assert scale.shape == (1,) and torch.allclose(scale, plan.inputs["model.layers.0.mlp.down_proj"].scale.reshape(1))


@pytest.fixture(scope="module")
def model_in_bfloat16():
    """The same random Llama cast to bfloat16: what a default checkpoint of ``model`` is served as."""
    return wide_llama(torch.bfloat16)


# Every scheme compressed-tensors writes that transformers runs (asymmetric grids aside: it cannot load their zero points)
SERVED = {
    "W4 g128 GPTQ": PRESETS["W4 g128 GPTQ"],
    "W4 g128 RTN": PRESETS["W4 g128 RTN"],
    "W8 per channel": QuantSpec(WeightSpec("rtn", 8, 0)),
    "W8A8 static": PRESETS["W8A8 static (min/max)"],
    "W8A8 dynamic": QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, granularity="token")),
    "FP8 W8A8 static": PRESETS["FP8 W8A8 static"],
    "FP8 W8A8 dynamic": PRESETS["FP8 W8A8 dynamic"],
    "NVFP4 W4A4": PRESETS["NVFP4 W4A4"],
    "NVFP4A16": PRESETS["NVFP4A16"],
    "MXFP4 W4A4": PRESETS["MXFP4 W4A4"],
    "W4 g128 AWQ": PRESETS["W4 g128 AWQ"],
}


def logits(model, evaluation) -> torch.Tensor:
    with torch.inference_mode():
        return model(evaluation.windows).logits.float()


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


@pytest.mark.parametrize("label", list(SERVED))
def test_a_float32_model_written_by_default_runs_in_transformers_as_simulated(label, model, model_in_bfloat16, calibrated,
                                                                              tmp_path):
    """A float32 model (dtype auto on a CPU without native bf16) is written in bfloat16 by default:
    its float parts, its scales and its config's dtype. from_pretrained with no dtype runs it (FP4
    stopped on the first layer when the float parts were float32: compressed-tensors decompresses FP4
    to bfloat16), and it is the simulated model served in bfloat16.

    What is compared: every stored layer is the simulated integers on scales rounded to bfloat16,
    dequantized in bfloat16 as a loader does, so each weight is within two bfloat16 roundings (2^-7)
    of the simulated one, relative (measured up to 1.85 * 2^-8; FP4's scales are not rounded). The
    logits on the held-out windows are the simulated model's, cast to bfloat16 (the checkpoint's
    dtype), within twice what running that simulation in float32 instead moves them: the checkpoint's
    own differences (its bf16 scales, transformers' input quantization in bf16) are bf16 roundings of
    the same kind, measured at 0.6 to 1.4 times that over these schemes. Not perplexity: this random
    model's is near its vocabulary's size whatever its weights."""
    spec = SERVED[label]
    calibration, stats, hessians = calibrated
    plan, _ = quantize(model, spec, Calibrated(samples=calibration, stats=stats, hessians=hessians))
    summary = save_quantized(model, plan, spec, tmp_path / "out")
    assert "float parts in bfloat16 (computed in float32)" in summary.describe()
    provenance = json.loads((tmp_path / "out" / "calibscope.json").read_text())
    assert (provenance["dtype"], provenance["model_dtype"]) == ("bfloat16", "float32")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as opened:
        for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            assert opened.get_tensor(name).dtype == torch.bfloat16, name
    for name, dense in dequantized_layers(tmp_path / "out"):
        simulated = plan.weights[name]
        assert torch.all((dense - simulated).abs() <= simulated.abs() * 2**-7), name
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # no dtype: the config's
    assert back.dtype == torch.bfloat16
    evaluation = windows(model)
    with quantized(model, plan):
        in_float32 = logits(model.model, evaluation)
    with quantized(model_in_bfloat16, plan):
        simulated = logits(model_in_bfloat16.model, evaluation)
    assert rms(logits(back, evaluation), simulated) <= 2 * rms(in_float32, simulated)


def test_what_the_model_class_keeps_in_float32_is_written_in_float32(tmp_path):
    """transformers keeps some parameters in float32 whatever the dtype (DeepSeek V3's
    e_score_correction_bias): they are written as the model holds them, not rounded to bfloat16."""
    loaded = wide_llama()
    loaded.model._keep_in_fp32_modules_strict = {"input_layernorm"}
    spec = QuantSpec(WeightSpec("rtn", 4, 128))
    save_quantized(loaded, quantize(loaded, spec)[0], spec, tmp_path / "out")
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as opened:
        assert opened.get_tensor("model.layers.0.input_layernorm.weight").dtype == torch.float32
        assert opened.get_tensor("model.layers.0.post_attention_layernorm.weight").dtype == torch.bfloat16


def test_tensor_names_dtypes_and_shapes_are_llm_compressors(model, calibrated, tmp_path):
    """What llm-compressor 0.14 (compressed-tensors 0.19) writes for W4A16, W4A16 asymmetric and W8A8
    on this Llama shape (read from its files: bench/checkpoint.py compares them whole), in the model's
    dtype as it writes it."""
    _, stats, hessians = calibrated
    expected = {
        QuantSpec(WeightSpec("gptq", 4, 128)): {
            "q_proj.weight_packed": (torch.int32, (256, 32)), "q_proj.weight_scale": (torch.float32, (256, 2)),
            "q_proj.weight_shape": (torch.int64, (2,)), "down_proj.weight_packed": (torch.int32, (256, 64)),
            "down_proj.weight_scale": (torch.float32, (256, 4))},
        QuantSpec(WeightSpec("gptq", 4, 128, symmetric=False)): {
            "q_proj.weight_zero_point": (torch.int32, (32, 2)), "down_proj.weight_zero_point": (torch.int32, (32, 4))},
        QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8)): {
            "q_proj.weight": (torch.int8, (256, 256)), "q_proj.weight_scale": (torch.float32, (256, 1)),
            "down_proj.weight": (torch.int8, (256, 512))},
    }
    for number, (spec, tensors) in enumerate(expected.items()):
        plan, _ = quantize(model, spec, Calibrated(stats=stats, hessians=hessians))
        save_quantized(model, plan, spec, tmp_path / str(number), dtype="model")
        with safe_open(tmp_path / str(number) / "model.safetensors", "pt") as opened:
            for short, (dtype, shape) in tensors.items():
                prefix = "model.layers.0.self_attn." if short.startswith("q_proj") else "model.layers.0.mlp."
                tensor = opened.get_tensor(prefix + short)
                assert (tensor.dtype, tuple(tensor.shape)) == (dtype, shape), short
            names = opened.keys()  # a list: safe_open itself is neither iterable nor a container
            assert "lm_head.weight" in names and "model.layers.0.self_attn.q_proj.weight" not in names or number == 2


@pytest.mark.parametrize("spec", [QuantSpec(WeightSpec("rtn", 4, 128)), QuantSpec(WeightSpec("gptq", 4, 128)),
                                  QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "minmax")),
                                  PRESETS["W4A4 int (A4 per token)"]], ids=lambda s: s.label())
def test_bfloat16_reloads_to_exactly_the_simulated_model(spec, tmp_path):
    """In bfloat16 a checkpoint stores its scales in bfloat16 (as llm-compressor's do): calibscope
    rounds on those scales, so the reloaded weights are the simulated ones to the bit and the
    perplexities agree (they were 0.44% apart for W4 RTN on Gemma when the simulation kept float32 scales)."""
    loaded = wide_llama(torch.bfloat16)
    calibration = build(corpus(), loaded.tokenizer, RandomSpec(nsamples=8, length=96, seed=0))
    stats = collect(loaded, calibration, StatsSpec(batch_size=4)) if spec.activations.enabled else None
    hessians = collect_hessians(loaded, calibration, HessianSpec(batch_size=4,
                                                                 diagnostics="none")) if spec.needs_hessians else None
    plan, _ = quantize(loaded, spec, Calibrated(stats=stats, hessians=hessians))
    save_quantized(loaded, plan, spec, tmp_path / "out")
    assert largest_weight_difference(tmp_path / "out", plan.weights) == 0.0
    back = reloaded(tmp_path / "out", torch.bfloat16)
    weights = dense_weights(back)
    for name, simulated in plan.weights.items():
        assert simulated.dtype == torch.bfloat16 and torch.equal(weights[name], simulated), name
    if spec.activations.enabled and not spec.activations.dynamic:  # the input scales too: bf16 in the file, the same value
        stored = back.model.layers[0].mlp.down_proj.input_scale
        assert float(stored) == float(plan.inputs["model.layers.0.mlp.down_proj"].scale)
    evaluation = windows(loaded)
    with quantized(loaded, plan):
        simulated_ppl = perplexity(loaded, evaluation)
    back_ppl = perplexity(from_model(back, loaded.tokenizer), evaluation)
    # the same weights; the reloaded model's own bf16 forward (and compressed-tensors' input
    # quantization, in bf16) differs in its roundings: ~1e-4 of the perplexity here
    assert back_ppl / simulated_ppl == pytest.approx(1.0, abs=1e-3)
    # what the dashboard reports: static inputs quantized in float32 on the file's scales, as vLLM does;
    # per-token int4 inputs by compressed-tensors' own forward, their runtime, which the simulation follows
    checked, how = reloaded_divergence(tmp_path / "out", loaded, evaluation)
    assert checked.perplexity / simulated_ppl == pytest.approx(1.0, abs=1e-3)
    static, dynamic = spec.activations.enabled and not spec.activations.dynamic, spec.activations.dynamic
    assert ("as vLLM's kernels do" in how, "compressed-tensors' own forward" in how) == (static, dynamic)


def test_tied_embeddings_are_written_once_and_reloaded_tied(tmp_path):
    loaded = wide_llama(tied=True)
    spec = QuantSpec(WeightSpec("rtn", 4, 128))
    plan, _ = quantize(loaded, spec)
    save_quantized(loaded, plan, spec, tmp_path / "out")
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as opened:
        names = opened.keys()  # a list: safe_open itself is neither iterable nor a container
        assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    back = reloaded(tmp_path / "out")
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "generation_config.json").is_file()


def test_shards_and_index_reload(model, tmp_path):
    spec = QuantSpec(WeightSpec("rtn", 4, 128))
    plan, _ = quantize(model, spec)
    summary = save_quantized(model, plan, spec, tmp_path / "out", dtype="float32", max_shard_bytes=200_000)
    assert len(summary.files) > 3 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(summary.files)
    assert sum((tmp_path / "out" / f).stat().st_size for f in summary.files) >= summary.bytes
    weights = dense_weights(reloaded(tmp_path / "out"))
    assert all(torch.equal(weights[name], simulated) for name, simulated in plan.weights.items())


def test_block_by_block_from_disk_writes_the_same_checkpoint_as_in_memory(model, calibrated, tmp_path):
    from engine import ModelSpec, load_model

    model.model.save_pretrained(tmp_path / "source")
    model.tokenizer.save_pretrained(tmp_path / "source")
    on_disk = load_model(ModelSpec(str(tmp_path / "source"), dtype="float32", offload="disk"))
    calibration = calibrated[0]
    spec = QuantSpec(WeightSpec("gptq", 4, 128))
    with CheckpointWriter(on_disk, spec, tmp_path / "streamed", dtype="model", max_shard_bytes=300_000) as writer:
        kept, _ = quantize(on_disk, Quantization(spec, sequential=True, hessians=HessianSpec(batch_size=4, diagnostics="none")),
                           Calibrated(calibration), sink=writer.add)
        writer.finish()
    assert not kept.weights and not kept.integers  # handed to the writer block by block, not kept
    in_memory, _ = quantize(model, Quantization(spec, sequential=True, hessians=HessianSpec(batch_size=4, diagnostics="none")),
                            Calibrated(calibration))
    weights = dense_weights(reloaded(tmp_path / "streamed"))
    for name, simulated in in_memory.weights.items():
        assert torch.allclose(weights[name], simulated, rtol=0, atol=1e-6), name
    for name, tensor in model.model.state_dict().items():
        if not any(name == f"{layer}.weight" for layer in in_memory.weights):
            assert torch.equal(dict(reloaded(tmp_path / "streamed").state_dict())[name], tensor), name


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """An independent reader of AutoGPTQ's packing (value k of a word in bits k·bits onwards), one word at a time."""
    rows, columns = words.shape
    out = torch.empty(rows * 32 // bits, columns, dtype=torch.int64)
    for row in range(rows):
        for column in range(columns):
            word = int(words[row, column]) & 0xFFFFFFFF
            for k in range(32 // bits):
                out[row * 32 // bits + k, column] = (word >> (bits * k)) & (2**bits - 1)
    return out


@pytest.mark.parametrize("bits,group_size,act_order", [(4, 128, "static"), (8, 0, "none"), (4, 64, "dynamic"), (2, 128, "none")])
def test_gptq_format_unpacks_to_the_simulated_weights(bits, group_size, act_order, model, calibrated, tmp_path):
    spec = QuantSpec(WeightSpec("gptq", bits, group_size, act_order=act_order))
    plan, _ = quantize(model, spec, Calibrated(hessians=calibrated[2]))
    save_quantized(model, plan, spec, tmp_path / "out", fmt="gptq")
    settings = json.loads((tmp_path / "out" / "quantize_config.json").read_text())
    assert settings == json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert (settings["bits"], settings["group_size"], settings["desc_act"], settings["sym"]) == (
        bits, group_size or -1, act_order == "dynamic", True)
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as opened:
        for name, simulated in plan.weights.items():
            codes = unpack_rows(opened.get_tensor(f"{name}.qweight"), bits)  # [in, out]
            zeros = unpack_rows(opened.get_tensor(f"{name}.qzeros").T, bits).T + 1  # v1 stores zero - 1
            scales, g_idx = opened.get_tensor(f"{name}.scales"), opened.get_tensor(f"{name}.g_idx")
            assert scales.dtype == torch.float16 and g_idx.dtype == torch.int32
            g_idx = g_idx.long()
            dequantized = (scales.float()[g_idx] * (codes - zeros[g_idx]).float()).T
            expected = IntWeight(plan.integers[name].codes, replace(plan.integers[name].grids,
                                                                    scale=plan.integers[name].grids.scale.half().float()))
            assert torch.equal(dequantized, expected.dequantize()), name
            assert float((dequantized - simulated).abs().max()) <= float(simulated.abs().max()) * 2**-10
    assert (largest_weight_difference(tmp_path / "out", plan.weights)
            <= max(float(w.abs().max()) for w in plan.weights.values()) * 2**-10)


def test_the_integers_are_the_fake_weights_for_every_act_order():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(512, 96, generator=generator) @ torch.randn(96, 96, generator=generator)
    weight = torch.randn(48, 96, generator=generator)
    for act_order in ("none", "static", "dynamic", "group-aware"):
        for group_size in (0, 32, 40):
            result = gptq(weight, x.T @ x, 4, group_size, block_size=32, act_order=act_order)
            integers = IntWeight(result.grids.codes(result.weight), result.grids)
            assert torch.equal(integers.dequantize(), result.weight), (act_order, group_size)
            assert int(integers.codes.max()) <= 15
            groups = -(-96 // group_size) if group_size else 1
            assert result.grids.scale.shape == (48, groups)


def test_refusals_say_why_and_what_to_do(model, calibrated, tmp_path):
    _, stats, hessians = calibrated
    dynamic = QuantSpec(WeightSpec("gptq", 4, 128, act_order="dynamic"))
    plan, _ = quantize(model, dynamic, Calibrated(hessians=hessians))
    with pytest.raises(ExportError, match="no longer stores activation order 'group'.*GPTQ format"):
        save_quantized(model, plan, dynamic, tmp_path / "a")
    channel = QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "minmax", granularity="channel"))
    with pytest.raises(ExportError, match="per-input-channel"):
        save_quantized(model, quantize(model, channel, Calibrated(stats=stats))[0], channel, tmp_path / "b")
    asymmetric = QuantSpec(WeightSpec("rtn", 4, 128, symmetric=False))
    with pytest.raises(ExportError, match="asymmetric"):
        save_quantized(model, quantize(model, asymmetric)[0], asymmetric, tmp_path / "c", fmt="gptq")
    rtn = QuantSpec(WeightSpec("rtn", 4, 128))
    foreign = QuantizedModel(weights=dict(quantize(model, rtn)[0].weights))
    with pytest.raises(ExportError, match="made outside calibscope"):
        save_quantized(model, foreign, rtn, tmp_path / "d")
    nvfp4 = QuantSpec(WeightSpec("rtn", format="nvfp4"))
    fp4_plan = quantize(model, nvfp4)[0]
    for dtype in ("float32", "float16", "model"):  # the model is float32
        with pytest.raises(ExportError, match="NVFP4 weights run in bfloat16 only.*Write the checkpoint in bfloat16"):
            save_quantized(model, fp4_plan, nvfp4, tmp_path / "f", dtype=dtype)
    with pytest.raises(ExportError, match="checkpoint dtype='float64' is not supported"):
        save_quantized(model, fp4_plan, nvfp4, tmp_path / "f", dtype="float64")
    assert not any(tmp_path.iterdir())
    warned = save_quantized(model, quantize(model, QuantSpec(WeightSpec("rtn", 3, 128)))[0],
                            QuantSpec(WeightSpec("rtn", 3, 128)), tmp_path / "e")
    assert "vLLM serves weight-only compressed-tensors of 4 or 8 bits" in warned.warning and warned.warning in warned.describe()


def test_an_existing_folder_is_never_touched(model, tmp_path):
    spec = QuantSpec(WeightSpec("rtn", 4, 128))
    plan, _ = quantize(model, spec)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists"):
        save_quantized(model, plan, spec, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


def test_a_full_disk_leaves_nothing_behind_and_says_so(model, tmp_path, monkeypatch):
    spec = QuantSpec(WeightSpec("rtn", 4, 128))
    plan, _ = quantize(model, spec)
    written = []

    def full(file, data):
        if len(written) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(memoryview(data)))
        file.write(data)

    monkeypatch.setattr(shard_module, "write_bytes", full)
    with pytest.raises(ExportError, match="The disk is full.*nothing of it was left behind"):
        save_quantized(model, plan, spec, tmp_path / "out", max_shard_bytes=100_000)
    assert written and list(tmp_path.iterdir()) == []


def test_shards_are_safetensors_files_its_own_reader_reads(tmp_path):
    """Each tensor on disk as it is added, aligned to its element size with no gaps (every dtype a
    checkpoint holds, odd lengths among them); safetensors' reader gives back every tensor."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "odd.bf16": torch.randn(7, generator=generator).to(torch.bfloat16),
        "fp8": torch.randn(5, 3, generator=generator).to(torch.float8_e4m3fn),
        "packed": torch.randint(-2**31, 2**31 - 1, (9, 4), dtype=torch.int32, generator=generator),
        "shape": torch.tensor([4096, 14336]),
        "flag": torch.tensor([True, False, True]),
        "codes": torch.randint(0, 255, (3, 3), dtype=torch.uint8, generator=generator),
        "float": torch.randn(2, 5, generator=generator),
        "scalar": torch.tensor(2.5, dtype=torch.float16),
    }
    writer = shard_module.ShardWriter(tmp_path, max_bytes=10**9)
    for name, tensor in tensors.items():
        writer.add({name: tensor})
    assert (writer.finish() == ["model.safetensors"]
            and writer.total_bytes == sum(map(shard_module.tensor_bytes, tensors.values())))
    with safe_open(tmp_path / "model.safetensors", "pt") as opened:
        assert set(opened.keys()) == set(tensors) and opened.metadata() == {"format": "pt"}
        for name, tensor in tensors.items():
            back = opened.get_tensor(name)
            assert back.dtype == tensor.dtype and back.shape == tensor.shape
            assert torch.equal(back.view(torch.uint8), tensor.view(torch.uint8)) if tensor.dim() else back == tensor, name
    header_length = int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8:8 + header_length])
    spans = sorted(entry["data_offsets"] for name, entry in header.items() if name != "__metadata__")
    assert header_length % 8 == 0 and spans[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    for name, entry in header.items():
        if name != "__metadata__":
            assert entry["data_offsets"][0] % tensors[name].element_size() == 0, name


FLOAT_SCHEMES = ("FP8 W8A8 static", "FP8 W8A8 dynamic", "NVFP4 W4A4", "NVFP4A16", "MXFP4 W4A4")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", FLOAT_SCHEMES)
def test_float_formats_reload_to_exactly_the_simulated_model(name, dtype, tmp_path):
    """FP8 (float-quantized), NVFP4 and MXFP4 (their pack-quantized formats) written with
    compressed-tensors' compressors in the model's dtype: read back with the package's own code they
    are the simulated weights to the bit, and the reloaded model's perplexity is the simulated one
    (transformers where it runs them). FP4 runs in bfloat16 only: a float32 model's FP4 checkpoint is
    written in bfloat16 (its FP4 weights and scales as they are) and, read back into the float32
    model, is the simulation with its float parts rounded to bfloat16 (0.18% of perplexity apart from
    the float32 one for NVFP4 W4A4, whose 4-bit inputs those roundings move)."""
    loaded = wide_llama(dtype)
    spec = PRESETS[name]
    calibration = build(corpus(), loaded.tokenizer, RandomSpec(nsamples=8, length=96, seed=0))
    stats = collect(loaded, calibration, StatsSpec(batch_size=4))
    plan, _ = quantize(loaded, spec, Calibrated(stats=stats))
    fp4 = "FP4" in name.upper()
    summary = save_quantized(loaded, plan, spec, tmp_path / "out", dtype="bfloat16" if fp4 else "model")
    assert largest_weight_difference(tmp_path / "out", plan.weights) == 0.0
    if fp4 and dtype == torch.float32:  # the simulation with the float parts as the file holds them
        plan = replace(plan, floats={name: tensor.bfloat16().float() for name, tensor in loaded.model.state_dict().items()
                                     if name.removesuffix(".weight") not in plan.weights})
    evaluation = windows(loaded)
    with quantized(loaded, plan):
        simulated = perplexity(loaded, evaluation)
    checked, how = reloaded_divergence(tmp_path / "out", loaded, evaluation)
    assert checked.perplexity / simulated == pytest.approx(1.0, abs=1e-3 if dtype == torch.bfloat16 else 1e-6)
    assert ("transformers from_pretrained" in how) == (dtype == torch.bfloat16 or not fp4)
    assert (summary.warning is not None) == name.startswith("MXFP4")  # vLLM serves MXFP4 as W4A16
