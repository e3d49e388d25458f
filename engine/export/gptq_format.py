"""calibscope's quantization in the GPTQ checkpoint format (GPTQModel's "gptq", v1: what AutoGPTQ,
optimum, older loaders and many hub repositories use; vLLM's gptq / gptq_marlin kernels serve it).

Per quantized Linear ``name``: ``qweight`` int32 [in · bits / 32, out] (codes packed along the input
dimension, the first of each 32 / bits in the low bits), ``qzeros`` int32 [groups, out · bits / 32]
(zero points minus one: v1's convention, packed along the output dimension), ``scales`` float16
[groups, out], ``g_idx`` int32 [in] (each input column's group), and the bias if any. Symmetric
schemes only: v1's zero - 1 cannot hold the zero point 0 an asymmetric grid may have.
"""
from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import torch

from engine.errors import ExportError
from engine.quant import ActOrder, CholeskyFailure, IntWeight, QuantSpec, WeightMethod

PACKABLE_BITS = (2, 4, 8)
SCALE_DTYPE = torch.float16


def refusal(spec: QuantSpec) -> str | None:
    weights = spec.weights
    if not weights.enabled or spec.activations.enabled:
        return "The GPTQ format holds weight-only quantization; write compressed-tensors for static activation ranges."
    if weights.format.is_float:
        return f"The GPTQ format holds integer weights; write {weights.format.value} weights as compressed-tensors."
    if not weights.symmetric:
        return ("The GPTQ (v1) format stores zero points minus one and cannot hold an asymmetric grid's zero point 0; "
                "write compressed-tensors, which stores asymmetric zero points.")
    if spec.kv_cache is not None:
        return ("The GPTQ format has no KV cache scales; write compressed-tensors, whose kv_cache_scheme vLLM and "
                "transformers read.")
    if spec.mixed is not None:
        return ("The GPTQ format's config holds one width for every layer; write mixed precision as compressed-tensors "
                "(one config group per width, as vLLM serves it).")
    if weights.bits not in PACKABLE_BITS:
        return (f"GPTQ loaders pack {', '.join(map(str, PACKABLE_BITS))}-bit weights; write {weights.bits}-bit "
                "weights as compressed-tensors.")
    return None


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``bits``-wide integers [rows, cols] packed along rows into int32 [rows · bits / 32,
    cols], element k of each 32 / bits in bits k·bits onwards (AutoGPTQ's and GPTQModel's order)."""
    per_word = 32 // bits
    if values.shape[0] % per_word:
        raise ExportError(f"GPTQ packing needs a multiple of {per_word} along the packed dimension, "
                          f"not {values.shape[0]}; write compressed-tensors.")
    grouped = values.to(torch.int64).reshape(-1, per_word, values.shape[1])
    shifts = (torch.arange(per_word, device=values.device) * bits)[None, :, None]
    words = (grouped << shifts).sum(dim=1)  # the fields do not overlap: the sum is their bitwise or
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def layer_tensors(name: str, integers: IntWeight) -> dict[str, torch.Tensor]:
    """One Linear layer's qweight, qzeros, scales and g_idx."""
    grids = integers.grids
    columns = integers.codes.shape[1]
    return {
        f"{name}.qweight": pack_rows(integers.codes.T, grids.bits),
        f"{name}.qzeros": pack_rows(grids.zero - 1, grids.bits).T.contiguous(),
        f"{name}.scales": grids.scale.T.to(SCALE_DTYPE).contiguous(),
        f"{name}.g_idx": grids.column_groups(columns).to(torch.int32),
    }


def quantize_config(spec: QuantSpec) -> dict:
    """quantize_config.json with GPTQModel's keys for the v1 format (also config.json's
    quantization_config); ``meta`` says how calibscope made it, in GPTQModel's words where it has them."""
    weights = spec.weights
    gptq = weights.method is WeightMethod.GPTQ
    return {
        "bits": weights.bits,
        "group_size": weights.group_size or -1,
        "desc_act": gptq and weights.act_order is ActOrder.DYNAMIC,
        "lm_head": False,
        "method": "gptq",
        "quant_method": "gptq",
        "format": "gptq",
        "checkpoint_format": "gptq",
        "pack_dtype": "int32",
        "meta": {
            "quantizer": [f"calibscope:{version('calibscope')}"],
            "method": weights.method.value,
            "damp_percent": weights.damping if gptq else None,
            "damp_auto_increment": weights.damping_step if gptq and weights.on_failure is CholeskyFailure.STEPWISE else None,
            "static_groups": False,
            "true_sequential": weights.true_sequential,
            "act_group_aware": gptq and weights.act_order is ActOrder.GROUP_AWARE,
        },
        "sym": weights.symmetric,
    }


def update_config(folder: Path, spec: QuantSpec) -> None:
    settings = quantize_config(spec)
    (folder / "quantize_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["quantization_config"] = settings
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
