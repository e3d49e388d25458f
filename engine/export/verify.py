"""Read a written checkpoint's quantized layers back to dense weights, with the readers its loaders
use (compressed-tensors' own decompressors; GPTQ's unpacking), to check that it holds what calibscope
measured without loading a model (works for a model of any size, one layer at a time)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.quantization import QuantizationConfig
from safetensors import safe_open

from engine.errors import ExportError
from engine.export.checkpoint import CheckpointFormat
from engine.export.transforms import SUFFIX as ROTATION_SUFFIX
from engine.models import SAFETENSORS_INDEX, SAFETENSORS_SINGLE

SUFFIXES = {CheckpointFormat.COMPRESSED_TENSORS: ".weight_scale", CheckpointFormat.GPTQ: ".qweight"}


def quantization_settings(folder: Path) -> tuple[CheckpointFormat, dict]:
    """The checkpoint's format and config.json's ``quantization_config``."""
    settings = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("quantization_config")
    if not settings:
        raise ExportError(f"'{folder}' is not a quantized checkpoint (config.json has no quantization_config).")
    try:
        return CheckpointFormat(settings.get("quant_method")), settings
    except ValueError:
        raise ExportError(f"'{folder}' holds a {settings.get('quant_method')} checkpoint; calibscope reads "
                          f"{' and '.join(fmt.value for fmt in CheckpointFormat)}.") from None


def _tensor_files(folder: Path) -> dict[str, str]:
    if (folder / SAFETENSORS_INDEX).is_file():
        return json.loads((folder / SAFETENSORS_INDEX).read_text(encoding="utf-8"))["weight_map"]
    with safe_open(folder / SAFETENSORS_SINGLE, "pt") as opened:
        # safe_open has keys() but is neither iterable nor a container (SIM118's fix would raise)
        return {key: SAFETENSORS_SINGLE for key in opened.keys()}  # noqa: SIM118


def _layer_state(folder: Path, files: dict[str, str], layer: str) -> dict[str, torch.Tensor]:
    state = {}
    for key, file in files.items():
        if key.startswith(f"{layer}.") and "." not in key[len(layer) + 1:]:
            with safe_open(folder / file, "pt") as opened:
                state[key[len(layer) + 1:]] = opened.get_tensor(key)
    return state


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ's int32 words [rows, cols] back to unsigned integers [rows · 32 / bits, cols]."""
    fields = [(words.to(torch.int64) >> (bits * k)) & (2**bits - 1) for k in range(32 // bits)]
    return torch.stack(fields, dim=1).reshape(-1, words.shape[1])


def _gptq_dense(state: dict[str, torch.Tensor], bits: int) -> torch.Tensor:
    codes = unpack_rows(state["qweight"], bits)  # [in, out]
    zeros = unpack_rows(state["qzeros"].T, bits).T + 1  # [groups, out]; v1 stores zero - 1
    groups = state["g_idx"].long()
    return (state["scales"].float()[groups] * (codes - zeros[groups]).float()).T


def dequantized_layers(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Each quantized layer's weight [out, in] as its loader dequantizes it (float32)."""
    folder = Path(folder)
    method, settings = quantization_settings(folder)
    files = _tensor_files(folder)
    layers = sorted(key.removesuffix(SUFFIXES[method]) for key in files if key.endswith(SUFFIXES[method]))
    if method is CheckpointFormat.GPTQ:
        for layer in layers:
            yield layer, _gptq_dense(_layer_state(folder, files, layer), settings["bits"])
        return
    config = QuantizationConfig.model_validate(settings)
    scheme = next(iter(config.config_groups.values()))
    fmt = scheme.format or config.format
    compressor = BaseCompressor.get_value_from_registry(fmt)
    for layer in layers:
        state = _layer_state(folder, files, layer)
        if fmt.endswith("fp4-pack-quantized"):
            yield layer, _fp4_dense(state, scheme.weights, fmt)
        else:
            yield layer, compressor.decompress(state, scheme)["weight"].float()


def _fp4_dense(state: dict[str, torch.Tensor], args, fmt: str) -> torch.Tensor:
    """An NVFP4 or MXFP4 layer with the package's own unpacking and dequantization, in float32 (its
    decompressor dequantizes FP4 in bfloat16, one rounding away from what the file holds)."""
    from compressed_tensors.compressors.mx_utils import decompress_mx_scale
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    packed = state["weight_packed"]
    values = unpack_fp4_from_uint8(packed, packed.shape[0], packed.shape[1] * 2, dtype=torch.float32)
    scale = decompress_mx_scale(state["weight_scale"]) if fmt.startswith("mx") else state["weight_scale"]
    return dequantize(x_q=values, scale=scale.float(), args=args, global_scale=state.get("weight_global_scale"),
                      dtype=torch.float32)


def largest_weight_difference(folder: str | Path, simulated: dict[str, torch.Tensor]) -> float:
    """max |checkpoint - simulated| over every quantized layer (each must be in ``simulated``), the
    checkpoint's weights in the dtype the simulated model holds them in (a loader of a bf16 model
    holds its dequantized weights in bf16)."""
    largest = 0.0
    for name, dense in dequantized_layers(folder):
        if name not in simulated:
            raise ExportError(f"The checkpoint quantizes {name}, which the simulated model does not.")
        held = simulated[name]
        largest = max(largest, float((dense.to(held.dtype).float() - held.float()).abs().max()))
    return largest


def transformers_loads(folder: str | Path, dtype: torch.dtype = torch.bfloat16) -> str | None:
    """Why transformers cannot load this checkpoint here in ``dtype`` (None: it can)."""
    method, settings = quantization_settings(Path(folder))
    if method is CheckpointFormat.GPTQ:
        return "transformers reads the GPTQ format through optimum and GPTQModel, which calibscope does not install"
    weights = next(iter(settings["config_groups"].values()))["weights"]
    if not weights.get("symmetric", True) and settings.get("format") == "pack-quantized":
        return ("transformers with compressed-tensors 0.20 cannot load asymmetric pack-quantized zero points "
                "(llm-compressor issue 1618)")
    if settings.get("format", "").endswith("fp4-pack-quantized") and dtype != torch.bfloat16:
        return (f"compressed-tensors 0.20 decompresses FP4 weights to bfloat16 whatever the model's dtype, so a "
                f"{str(dtype).removeprefix('torch.')} model cannot run them in transformers")
    return None


def reloaded(folder: str | Path, dtype: torch.dtype):
    """The checkpoint as ``AutoModelForCausalLM.from_pretrained`` loads it, its weights decompressed
    (compressed-tensors does that on the first forward)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    with torch.no_grad():
        model(torch.ones(1, 2, dtype=torch.long, device=model.device))
    return model


def reloaded_divergence(folder: str | Path, loaded, evaluation, reference=None) -> tuple:
    """The checkpoint's divergence from the float model (``loaded``; ``reference``: its float
    reference on ``evaluation``, made here if not given) with its perplexity, and how it was read:
    through transformers where it loads the checkpoint, else its layers read back here
    (compressed-tensors' decompressor, or GPTQ unpacking) and swapped into ``loaded``."""
    from engine.models import from_model
    from engine.quant import QuantizedModel, TokenInputs, divergence, float_reference, perplexity, quantized, rounds_scales

    reference = reference if reference is not None else float_reference(loaded, evaluation)
    dtype = next(loaded.model.parameters()).dtype
    reason = transformers_loads(folder, dtype)
    inputs = input_quantizers(Path(folder), dtype)
    rotations = stored_rotations(folder)
    rotated = (f", its {len(rotations)} stored input rotations attached as vLLM applies them (transformers does not read a "
               "transform_config)") if rotations else ""
    # inputs only compressed-tensors runs (dynamic int below 8 bits): its own forward is the runtime
    own_runtime = bool(inputs) and all(isinstance(quantizer, TokenInputs) and quantizer.in_compressed_tensors
                                        for quantizer in inputs.values())
    if reason is None:
        model = from_model(reloaded(folder, dtype).to(loaded.device), loaded.tokenizer)
        if not (inputs and rounds_scales(dtype)) or own_runtime:
            said = ", its inputs quantized by compressed-tensors' own forward (vLLM has no kernel for them)"
            with quantized(model, QuantizedModel(rotations=rotations)):
                return divergence(model, evaluation, reference), (
                    "transformers from_pretrained" + rotated + (said if own_runtime else ""))
        # compressed-tensors' forward quantizes inputs in the model's dtype (x / scale rounded to bf16
        # before it is rounded to an integer or a float format); vLLM's kernels and calibscope divide in float32
        own = perplexity(model, evaluation)  # said beside the result: one head pass, not a divergence's two
        for module in model.model.modules():  # the layers' inputs; the KV cache is rounded in the model's dtype everywhere
            if hasattr(module, "quantization_scheme") and isinstance(module, torch.nn.Linear):
                module.quantization_enabled = False
        with quantized(model, QuantizedModel(inputs=inputs, rotations=rotations)):
            return divergence(model, evaluation, reference), (
                f"transformers from_pretrained{rotated}, its inputs quantized in float32 on the file's input scales as "
                f"vLLM's kernels do; transformers' own {str(dtype).removeprefix('torch.')} input quantization gives "
                f"perplexity {own:.3f}")
    read_back = QuantizedModel(weights=dict(dequantized_layers(folder)), inputs=inputs, floats=changed_floats(folder, loaded),
                               kv_cache=stored_kv_scales(folder, dtype), rotations=rotations)
    with quantized(loaded, read_back):
        return divergence(loaded, evaluation, reference), f"read back here ({reason}){rotated}"


def changed_floats(folder: str | Path, loaded) -> dict[str, torch.Tensor]:
    """The checkpoint's float tensors that differ from the model's own (a rescaled plan's norm gains
    and biases: SmoothQuant, AWQ; a float32 model's parts written in bfloat16, rounded), by parameter
    name, in the model's dtype."""
    state = loaded.model.state_dict()
    files = _tensor_files(Path(folder))
    changed = {}
    for key, file in files.items():
        if key in state and state[key].is_floating_point():
            with safe_open(Path(folder) / file, "pt") as opened:
                value = opened.get_tensor(key)
            if value.shape == state[key].shape and not torch.equal(value.to(state[key].dtype), state[key]):
                changed[key] = value.to(state[key].dtype)
    return changed


def stored_kv_scales(folder: str | Path, dtype: torch.dtype) -> dict:
    """Each attention module's KV cache scales in a compressed-tensors checkpoint (none without a
    ``kv_cache_scheme``), in ``dtype``: the module name -> KVScales."""
    from engine.quant import KVScales

    folder = Path(folder)
    method, settings = quantization_settings(folder)
    if method is not CheckpointFormat.COMPRESSED_TENSORS or not settings.get("kv_cache_scheme"):
        return {}
    files = _tensor_files(folder)

    def read(key: str) -> torch.Tensor:
        with safe_open(folder / files[key], "pt") as opened:
            return opened.get_tensor(key).to(dtype)

    modules = sorted(key.removesuffix(".k_scale") for key in files if key.endswith(".k_scale"))
    return {name: KVScales(read(f"{name}.k_scale"), read(f"{name}.v_scale")) for name in modules}


def stored_rotations(folder: str | Path) -> dict:
    """The online input rotations a compressed-tensors checkpoint holds (``{layer}.v_input.weight``:
    engine/export/transforms.py), layer -> InputRotation; the layers whose matrices are equal share one
    (as they do in the plan that wrote them)."""
    from engine.quant import InputRotation

    folder = Path(folder)
    found, distinct = {}, []
    for key, file in _tensor_files(folder).items():
        if key.endswith(ROTATION_SUFFIX):
            with safe_open(folder / file, "pt") as opened:
                matrix = opened.get_tensor(key).to(torch.float32)
            same = next((rotation for rotation in distinct if rotation.order == matrix.shape[0]
                         and torch.equal(rotation.matrix, matrix)), None)
            if same is None:
                same = InputRotation(matrix)
                distinct.append(same)
            found[key.removesuffix(ROTATION_SUFFIX)] = same
    return found


def input_quantizers(folder: Path, dtype: torch.dtype = torch.float32) -> dict:
    """How each quantized layer's input is quantized, read from a compressed-tensors checkpoint: its
    config's input_activations and each layer's input scale (int, FP8) or global scale (NVFP4);
    ``dtype``: the model's, which dynamic int inputs that compressed-tensors' forward runs compute in."""
    from engine.quant import Fp8Inputs, Grid, Mxfp4Inputs, NumberFormat, Nvfp4Inputs, TokenInputs

    folder = Path(folder)
    method, settings = quantization_settings(folder)
    args = (next(iter(settings["config_groups"].values())).get("input_activations")
            if method is CheckpointFormat.COMPRESSED_TENSORS else None)
    if not args:
        return {}
    files = _tensor_files(folder)
    layers = sorted(key.removesuffix(SUFFIXES[method]) for key in files if key.endswith(SUFFIXES[method]))

    def read(key: str) -> torch.Tensor:
        with safe_open(folder / files[key], "pt") as opened:
            return opened.get_tensor(key).float().reshape(1)

    floating, bits = args["type"] == "float", args["num_bits"]
    if floating and bits == 4:
        if args.get("strategy") == "group":  # MXFP4: block scales found at inference
            return {layer: Mxfp4Inputs() for layer in layers}
        return {layer: Nvfp4Inputs(read(f"{layer}.input_global_scale")) for layer in layers}
    if args.get("dynamic") is True:
        return {layer: TokenInputs(NumberFormat.FP8 if floating else NumberFormat.INT, bits, dtype) for layer in layers}
    if floating:
        return {layer: Fp8Inputs(read(f"{layer}.input_scale")) for layer in layers}
    half = 2 ** (bits - 1)  # signed levels -half..half-1 with zero point z: calibscope's zero is z + half
    grids = {}
    for layer in layers:
        scale = read(f"{layer}.input_scale")
        zero_key = f"{layer}.input_zero_point"
        zero = read(zero_key) + half if zero_key in files else torch.full_like(scale, float(half))
        grids[layer] = Grid(scale, zero, 2 * half - 1)
    return grids
