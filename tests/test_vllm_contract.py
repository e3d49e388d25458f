"""What vLLM's loaders expect of a checkpoint, read from vLLM's source and written down here (vLLM
needs a CUDA GPU and does not run on these machines), checked against the files calibscope writes.

Transcribed from vllm/model_executor/layers/quantization/:
- compressed_tensors/compressed_tensors.py: which scheme a config group selects
  (``_is_wNa16_group_channel``: weight-only, strategy channel or group, static; ``_is_static_tensor_w8a8``:
  8-bit weights per tensor or channel, symmetric, 8-bit static per-tensor inputs, symmetric or not);
- compressed_tensors/schemes/compressed_tensors_wNa16.py (``create_weights``): ``weight_packed`` int32
  [out, ceil(in · bits / 32)], ``weight_scale`` [out, in / group] in the model's dtype,
  ``weight_shape`` int64 [2], and for asymmetric weights ``weight_zero_point`` int32
  [ceil(out · bits / 32), in / group]; bits in WNA16_SUPPORTED_TYPES_MAP {4, 8} (the zero-point map
  is {4, 8} too);
- compressed_tensors/schemes/compressed_tensors_w8a8_int8.py: ``weight`` int8 [out, in],
  ``weight_scale`` float32 [out, 1] per channel, ``input_scale`` float32 [1] and, for asymmetric
  inputs, ``input_zero_point`` [1] (an integer: its loader copies into an int32 parameter);
- compressed_tensors/schemes/compressed_tensors_w8a8_fp8.py: ``weight`` float8_e4m3fn [out, in],
  ``weight_scale`` float32 [1] per tensor or [out, 1] per channel, ``input_scale`` [1] when static;
  compressed_tensors_w4a4_nvfp4.py / _w4a16_nvfp4.py: ``weight_packed`` uint8 [out, in / 2],
  ``weight_scale`` float8_e4m3fn [out, in / 16], ``weight_global_scale`` float32 [1] (vLLM warns
  when the layers it fuses, q/k/v or gate/up, have different ones) and, for W4A4,
  ``input_global_scale`` float32 [1]; _w4a16_mxfp4.py: ``weight_packed`` uint8 [out, in / 2],
  ``weight_scale`` uint8 [out, in / 32]; an MXFP4 checkpoint is served as W4A16 whatever its inputs;
- compressed_tensors/compressed_tensors.py (``CompressedTensorsKVCacheMethod``, ``validate_kv_cache_scheme``) and
  model_loader/weight_utils.py (``maybe_remap_kv_scale_name``): a ``kv_cache_scheme`` of 8-bit float,
  symmetric, strategy tensor or attn_head; each attention module's ``self_attn.k_scale`` / ``v_scale``
  is renamed ``self_attn.attn.k_scale`` (a name with no such parameter is dropped with a warning, and
  the scale stays 1.0) and copied into float32 [1] per tensor or, flattened, [num_kv_heads] per head;
- compressed_tensors/transform/linear.py and module.py: every Linear an online ``input`` transform of
  the ``transform_config`` matches (compressed-tensors' ``is_match``) gets a ``{scheme}_input``
  HadamardTransform whose weight is [n, n] (n: the scheme's head_dim, else the layer's input size),
  loaded per partition of a fused layer (q/k/v, gate/up), which must hold the same data; it is divided
  by √n after loading and each input multiplied by it (a dense GEMM; the "hadamard" type runs its
  Hadamard kernel, Sylvester's matrix, instead); no tensor parallelism with online transforms;
- gptq.py and gptq_marlin.py: ``quantize_config`` keys ``bits``, ``group_size`` (-1: per channel),
  ``desc_act``, ``sym``, ``lm_head``; ``qweight`` int32 [in · bits / 32, out], ``qzeros`` int32
  [groups, out · bits / 32], ``scales`` [groups, out], ``g_idx`` int32 [in]; gptq packs 2, 3, 4 or 8
  bits, gptq_marlin takes (4, sym) and (8, sym).
Every parameter a loader registers must be in the file with that shape (a weight loader asserts the
shape and copies, converting floating dtypes), and nothing quantized may be left in the dense form.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from compressed_tensors.quantization import QuantizationConfig
from compressed_tensors.transform import TransformConfig
from compressed_tensors.utils import is_match
from safetensors import safe_open

from engine.export import save_quantized
from engine.export.compressed import vllm_warning
from engine.quant import PRESETS, ActivationSpec, Calibrated, MixedSpec, QuantSpec, RotationSpec, WeightSpec, quantize
from tests.test_checkpoint import calibrated, model  # noqa: F401  (fixtures)

WNA16_BITS = (4, 8)
WNA16_ZERO_POINT_BITS = (4, 8)
GPTQ_BITS = (2, 3, 4, 8)
GPTQ_MARLIN = {(4, True), (8, True)}
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def vllm_scheme(weights, inputs) -> str | None:
    """compressed_tensors.py's choice for one config group (None: no scheme, the load fails)."""
    if weights.type == "float" and weights.num_bits == 4:
        nvfp4 = weights.strategy == "tensor_group" and weights.group_size == 16
        mxfp4 = weights.strategy == "group" and weights.group_size == 32
        if mxfp4:
            return "W4A16Mxfp4"
        if nvfp4:
            return "W4A16Fp4" if inputs is None else "W4A4Fp4" if inputs.strategy == "tensor_group" else None
        return None
    if weights.type == "float" and weights.strategy in ("tensor", "channel") and weights.symmetric and not weights.dynamic:
        if inputs is None:
            return "W8A16Fp8"
        if inputs.type == "float" and (inputs.dynamic or (inputs.strategy == "tensor" and inputs.symmetric)):
            return "W8A8Fp8"
        return None
    if inputs is not None:
        static_tensor_w8a8 = (weights.num_bits == inputs.num_bits == 8 and weights.strategy in ("tensor", "channel")
                              and inputs.strategy == "tensor" and not weights.dynamic and not inputs.dynamic
                              and weights.symmetric)
        dynamic_token_w8a8 = (weights.num_bits == inputs.num_bits == 8 and weights.strategy in ("tensor", "channel")
                              and inputs.strategy == "token" and not weights.dynamic and inputs.dynamic and weights.symmetric)
        return "W8A8Int8" if (static_tensor_w8a8 or dynamic_token_w8a8) and weights.type == inputs.type == "int" else None
    if weights.strategy in ("channel", "group") and not weights.dynamic and weights.type == "int":
        if weights.num_bits not in WNA16_BITS or (not weights.symmetric and weights.num_bits not in WNA16_ZERO_POINT_BITS):
            return None  # CompressedTensorsWNA16.__init__ raises "Unsupported num_bits"
        return "WNA16"
    return None


def wna16_parameters(out: int, inputs: int, weights) -> dict[str, tuple[str, tuple[int, ...]]]:
    groups = inputs // (weights.group_size or inputs)
    expected = {"weight_packed": ("int32", (out, math.ceil(inputs * weights.num_bits / 32))),
                "weight_scale": ("float", (out, groups)), "weight_shape": ("int64", (2,))}
    if not weights.symmetric:
        expected["weight_zero_point"] = ("int32", (math.ceil(out * weights.num_bits / 32), groups))
    return expected


def w8a8_parameters(out: int, inputs: int, weights, activations) -> dict[str, tuple[str, tuple[int, ...]]]:
    expected = {"weight": ("int8", (out, inputs)),
                "weight_scale": ("float", (out, 1) if weights.strategy == "channel" else (1,)),
                "input_scale": ("float", (1,))}
    if not activations.symmetric:
        expected["input_zero_point"] = ("integer", (1,))
    return expected


def float_parameters(out: int, inputs: int, weights, activations) -> dict[str, tuple[str, tuple[int, ...]]]:
    if weights.num_bits == 8:
        expected = {"weight": ("float8_e4m3fn", (out, inputs)),
                    "weight_scale": ("float", (1,) if weights.strategy == "tensor" else (out, 1))}
        if activations is not None and not activations.dynamic:
            expected["input_scale"] = ("float", (1,))
        return expected
    if weights.group_size == 32:
        return {"weight_packed": ("uint8", (out, inputs // 2)), "weight_scale": ("uint8", (out, inputs // 32))}
    expected = {"weight_packed": ("uint8", (out, inputs // 2)), "weight_scale": ("float8_e4m3fn", (out, inputs // 16)),
                "weight_global_scale": ("float32", (1,))}
    if activations is not None:
        expected["input_global_scale"] = ("float32", (1,))
    return expected


def gptq_parameters(out: int, inputs: int, bits: int, group_size: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    groups = inputs // (inputs if group_size == -1 else group_size)
    return {"qweight": ("int32", (inputs * bits // 32, out)), "qzeros": ("int32", (groups, out * bits // 32)),
            "scales": ("float", (groups, out)), "g_idx": ("int32", (inputs,))}


def kind_matches(dtype: torch.dtype, kind: str) -> bool:
    if kind == "float":
        return dtype in FLOATS
    if kind == "integer":
        return not dtype.is_floating_point and dtype != torch.bool
    return dtype == getattr(torch, kind)


def stored(folder) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    with safe_open(folder / "model.safetensors", "pt") as opened:
        # safe_open has keys() but is neither iterable nor a container (SIM118's fix would raise)
        return {key: (opened.get_slice(key).get_dtype(), tuple(opened.get_slice(key).get_shape())) for key in opened.keys()}  # noqa: SIM118


def linear_shapes(loaded) -> dict[str, tuple[int, int]]:
    return {name: tuple(module.weight.shape) for name, module in loaded.model.named_modules()
            if isinstance(module, torch.nn.Linear) and name != "lm_head"}


def check_layers(files: dict, shapes: dict, expected_for) -> None:
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I32": torch.int32,
              "I64": torch.int64, "I8": torch.int8, "U8": torch.uint8, "F8_E4M3": torch.float8_e4m3fn}
    for layer, (out, inputs) in shapes.items():
        expected = expected_for(out, inputs)
        found = {key.removeprefix(f"{layer}."): value for key, value in files.items() if key.startswith(f"{layer}.")
                 and "." not in key.removeprefix(f"{layer}.")}
        assert set(found) == set(expected), (layer, sorted(found), sorted(expected))
        for parameter, (kind, shape) in expected.items():
            dtype, found_shape = found[parameter]
            assert found_shape == shape and kind_matches(dtypes[dtype], kind), (layer, parameter, dtype, found_shape)


SCHEMES = {
    "W4 g128 symmetric": QuantSpec(WeightSpec("gptq", 4, 128)),
    "W8 per channel": QuantSpec(WeightSpec("rtn", 8, 0)),
    "W4 g128 asymmetric": QuantSpec(WeightSpec("rtn", 4, 128, symmetric=False)),
    "W3 g128 (not served)": QuantSpec(WeightSpec("rtn", 3, 128)),
    "W8A8 static": QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "minmax")),
    "W8A8 static asymmetric inputs": QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "minmax", symmetric=False)),
    "W4A8 (not served)": QuantSpec(WeightSpec("rtn", 4, 0), ActivationSpec(8, "minmax")),
    "W8A8 dynamic per token": QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, granularity="token")),
    **{name: PRESETS[name] for name in ("FP8 W8A8 static", "FP8 W8A8 dynamic", "NVFP4 W4A4", "NVFP4A16", "MXFP4 W4A4")},
    "FP8 weights only": QuantSpec(WeightSpec("rtn", group_size=0, format="fp8")),
    "FP8 weights, int8 inputs (not served)": QuantSpec(WeightSpec("rtn", group_size=0, format="fp8"), ActivationSpec(8)),
}
SERVED_WITHOUT_INPUTS = {"W4A16Mxfp4"}  # vLLM drops these schemes' input quantization


@pytest.mark.parametrize("label", list(SCHEMES))
def test_compressed_tensors_files_are_what_vllms_loader_registers(label, model, calibrated, tmp_path):  # noqa: F811
    spec = SCHEMES[label]
    plan, _ = quantize(model, spec, Calibrated(stats=calibrated[1], hessians=calibrated[2]))
    summary = save_quantized(model, plan, spec, tmp_path / "out")
    settings = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(settings)
    assert config.quant_method == "compressed-tensors" and config.ignore == ["lm_head"]
    (group,) = config.config_groups.values()
    assert group.targets == ["Linear"]
    chosen = vllm_scheme(group.weights, group.input_activations)
    # calibscope warns about vLLM exactly where vLLM's loader finds no scheme or drops the simulated
    # input quantization, and the checkpoint says so
    dropped = chosen in SERVED_WITHOUT_INPUTS and group.input_activations is not None
    assert (chosen is None or dropped) == (vllm_warning(spec) is not None), (label, chosen)
    assert vllm_warning(spec) is None or vllm_warning(spec) in summary.warning
    files = stored(tmp_path / "out")
    shapes = linear_shapes(model)
    if group.weights.type == "float":
        # compressed-tensors' infer_module_format (llm-compressor's too): FP8 weights alone are naive-quantized
        fp8 = "float-quantized" if group.input_activations is not None else "naive-quantized"
        expected_format = {8: fp8, 4: "nvfp4-pack-quantized" if group.weights.group_size == 16 else
                           "mxfp4-pack-quantized"}[group.weights.num_bits]
        assert group.format == expected_format
        if chosen is not None:
            check_layers(files, shapes, lambda out, inputs: float_parameters(out, inputs, group.weights, group.input_activations))
    elif group.input_activations is None:
        assert group.format == "pack-quantized"
        check_layers(files, shapes, lambda out, inputs: wna16_parameters(out, inputs, group.weights))
    else:
        assert group.format == "int-quantized"
        if chosen is not None and not group.input_activations.dynamic:
            check_layers(files, shapes, lambda out, inputs: w8a8_parameters(out, inputs, group.weights, group.input_activations))
    assert "lm_head.weight" in files and not any(f"{layer}.weight" in files for layer in shapes
                                                 if group.input_activations is None and group.weights.type == "int")
    if chosen and chosen.startswith("W4A") and "Fp4" in chosen:  # NVFP4: the layers vLLM fuses share one global scale
        with safe_open(tmp_path / "out" / "model.safetensors", "pt") as opened:
            scales = {name: float(opened.get_tensor(f"model.layers.0.self_attn.{name}.weight_global_scale"))
                      for name in ("q_proj", "k_proj", "v_proj")}
        assert len(set(scales.values())) == 1, scales


@pytest.mark.parametrize("bits,group_size", [(4, 128), (8, 0), (2, 128)])
def test_gptq_files_are_what_vllms_gptq_loaders_register(bits, group_size, model, calibrated, tmp_path):  # noqa: F811
    spec = QuantSpec(WeightSpec("gptq", bits, group_size))
    plan, _ = quantize(model, spec, Calibrated(hessians=calibrated[2]))
    save_quantized(model, plan, spec, tmp_path / "out", fmt="gptq")
    settings = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert settings["quant_method"] == "gptq" and settings["lm_head"] is False
    assert settings["bits"] in GPTQ_BITS and settings["group_size"] == (group_size or -1)
    assert ((settings["bits"], settings["sym"]) in GPTQ_MARLIN) == (bits in (4, 8))
    check_layers(stored(tmp_path / "out"), linear_shapes(model),
                 lambda out, inputs: gptq_parameters(out, inputs, settings["bits"], settings["group_size"]))


# vllm/model_executor/layers/quantization/utils/quant_utils.py FUSED_LAYER_NAME_MAPPING: the layers
# vLLM's Llama fuses; compressed_tensors/utils.py find_matched_target matches a layer's name exactly
# (or a "re:" pattern), and a fused layer by its parts (``_match_fused_layer``: all of them must match)
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def matched_group(layer: str, groups: dict) -> str | None:
    """The config group vLLM gives ``layer`` (a name of vLLM's model: fused or not)."""
    direct = [name for name, group in groups.items() if layer in group.targets]
    if direct:
        return direct[0]
    fused = next((key for key in FUSED if layer.endswith(key)), None)
    parts = [layer.replace(fused, part) for part in FUSED[fused]] if fused else []
    found = [next((name for name, group in groups.items() if part in group.targets), None) for part in parts]
    return found[0] if found and all(found) else None


def test_a_mixed_precision_checkpoint_gives_every_vllm_layer_one_group_and_its_files(model, calibrated, tmp_path):  # noqa: F811
    spec = QuantSpec(WeightSpec("gptq", 4, 128), mixed=MixedSpec(5.0, (4, 8)))
    plan, table = quantize(model, spec, Calibrated(calibrated[0], hessians=calibrated[2]))
    save_quantized(model, plan, spec, tmp_path / "out")
    config = QuantizationConfig.model_validate(json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"])
    groups = config.config_groups
    assert {vllm_scheme(group.weights, group.input_activations) for group in groups.values()} == {"WNA16"}
    assert {group.weights.num_bits for group in groups.values()} == {4, 8}
    files, shapes = stored(tmp_path / "out"), linear_shapes(model)
    for block in range(2):
        vllm_layers = [f"model.layers.{block}.self_attn.{name}" for name in ("qkv_proj", "o_proj")] + \
                      [f"model.layers.{block}.mlp.{name}" for name in ("gate_up_proj", "down_proj")]
        for layer in vllm_layers:
            chosen = matched_group(layer, groups)
            assert chosen is not None, layer
            fused = next((key for key in FUSED if layer.endswith(key)), None)
            parts = [layer.replace(fused, part) for part in FUSED[fused]] if fused else [layer]
            for part in parts:  # each part is in the group its fused layer matched, and stored as that group says
                assert part in groups[chosen].targets, (layer, part)
                check_layers(files, {part: shapes[part]},
                             lambda out, inputs, weights=groups[chosen].weights: wna16_parameters(out, inputs, weights))
    assert set(table["layer"]) == {target for group in groups.values() for target in group.targets}


def vllm_kv_scale_name(name: str) -> str:
    """maybe_remap_kv_scale_name for compressed-tensors' names."""
    for scale in (".k_scale", ".v_scale"):
        if name.endswith(scale):
            return name.replace(scale, f".attn{scale}")
    return name


@pytest.mark.parametrize("strategy", ["tensor", "attn_head"])
def test_an_fp8_kv_cache_has_every_scale_vllm_registers(strategy, model, calibrated, tmp_path):  # noqa: F811
    from dataclasses import replace

    from engine.quant import KVCacheSpec

    spec = replace(PRESETS["FP8 W8A8 static"], kv_cache=KVCacheSpec(strategy))
    plan, _ = quantize(model, spec, Calibrated(calibrated[0], stats=calibrated[1]))
    save_quantized(model, plan, spec, tmp_path / "out")
    settings = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    kv = QuantizationConfig.model_validate(settings).kv_cache_scheme
    assert (kv.type, kv.num_bits, kv.symmetric, kv.dynamic, kv.strategy) == ("float", 8, True, False, strategy)
    files = stored(tmp_path / "out")
    config = model.model.config
    registered = {f"model.layers.{block}.self_attn.attn.{name}": config.num_key_value_heads if strategy == "attn_head" else 1
                  for block in range(config.num_hidden_layers) for name in ("k_scale", "v_scale")}
    found = {vllm_kv_scale_name(name): tensor for name, tensor in files.items() if name.endswith(("k_scale", "v_scale"))}
    assert set(found) == set(registered)
    for name, (dtype, shape) in found.items():  # vLLM's loader converts floating dtypes; the per-head one flattens
        assert dtype in ("BF16", "F16", "F32") and math.prod(shape) == registered[name], (name, dtype, shape)


@pytest.mark.parametrize("rotation", [RotationSpec(), RotationSpec(matrix="hadamard", block=32)])
def test_a_rotated_nvfp4_checkpoint_has_the_transform_of_every_layer_vllm_rotates(rotation, model, calibrated,  # noqa: F811
                                                                                 tmp_path):
    spec = QuantSpec(PRESETS["NVFP4 W4A4"].weights, PRESETS["NVFP4 W4A4"].activations, rotation=rotation)
    plan, _ = quantize(model, spec, Calibrated(calibrated[0], stats=calibrated[1]))
    save_quantized(model, plan, spec, tmp_path / "out")
    settings = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    transforms = TransformConfig.model_validate(settings["transform_config"])
    ((name, scheme),) = transforms.config_groups.items()
    online = [args for args in scheme.apply if args.is_online()]
    assert [args.location for args in online] == ["input"]
    assert scheme.type == ("hadamard" if rotation.matrix.value == "hadamard" else "random-hadamard")  # 32: Sylvester's
    files, modules = stored(tmp_path / "out"), dict(model.model.named_modules())
    size = scheme.head_dim
    for layer, (_, inputs) in linear_shapes(model).items():
        rotated = is_match(layer, modules[layer], online[0].targets, online[0].ignore)
        assert rotated == (layer in plan.rotations)
        if rotated:
            dtype, shape = files[f"{layer}.{name}_input.weight"]
            assert shape == (size or inputs, size or inputs) and dtype in ("BF16", "F32", "F16")
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as opened:
        fused = [opened.get_tensor(f"model.layers.0.self_attn.{part}.{name}_input.weight")
                 for part in ("q_proj", "k_proj", "v_proj")]
        matrix = fused[0].double()
    assert all(torch.equal(part, fused[0]) for part in fused)  # one input, one transform (vLLM checks it)
    assert torch.equal(matrix @ matrix.T, matrix.shape[0] * torch.eye(matrix.shape[0], dtype=torch.float64))
