"""An FP8 e4m3 KV cache, simulated as compressed-tensors quantizes it on load (``QuantizedKVCache``
calling ``fake_quantize`` with the layer's static ``k_scale`` / ``v_scale``): x / scale, clamped to
±448, cast to e4m3 (round to nearest even) and back, times scale, all in the model's dtype. vLLM's
kernel divides in float32 instead; for a bf16 model that moves a few percent of the codes by one
step, which is why the simulation follows the checkpoint's reload in transformers bit for bit, and
vLLM to within that rounding."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.quant.formats.floats import round_fp8


def fake_quantize_fp8_kv(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` [batch, kv heads, tokens, head dim] through an e4m3 cache with ``scale`` ([1] or [kv heads, 1, 1], x's dtype)."""
    scale = scale.to(device=x.device, dtype=x.dtype)
    return round_fp8(x / scale) * scale


@dataclass
class KVScales:
    """One attention layer's cache scales as a checkpoint stores them: ``keys`` and ``values``, [1]
    (per tensor) or [kv heads, 1, 1] (per head), in the model's dtype."""

    keys: torch.Tensor
    values: torch.Tensor

    def tap(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values as the FP8 cache returns them."""
        return fake_quantize_fp8_kv(keys, self.keys), fake_quantize_fp8_kv(values, self.values)

    def to(self, device: torch.device) -> KVScales:
        return KVScales(self.keys.to(device), self.values.to(device))
