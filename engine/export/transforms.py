"""A rotated plan's online transforms in a compressed-tensors checkpoint, as llm-compressor's QuIP
writes them and vLLM reads them.

``transform_config`` (in config.json's quantization_config): one scheme, named "v" as QuIP names its
input rotation, applying an ``input`` transform (online) and a ``weight_input`` inverse (already fused
into the stored weights) to the rotated layers, listed by name ("where it helps" rotates some). Each
rotated layer gets ``{layer}.v_input.weight``: the ±1 Hadamard matrix of its order, unnormalized, as
compressed-tensors' transform module holds it; vLLM (compressed_tensors/transform/module.py) divides
it by √n after loading and multiplies each input by it, a dense GEMM for "random-hadamard" and its
Hadamard kernel (Sylvester's matrix) for "hadamard". So "hadamard" is written only where every order
is a power of two; a deterministic Paley-Sylvester matrix is written as "random-hadamard", whose
stored matrix vLLM uses as it is.

transformers (5.x, with compressed-tensors 0.20) does not apply a transform_config when it loads a
checkpoint: it drops the transform tensors. The reload check (verify.py, ``stored_rotations``) reads
them back and attaches them as vLLM does."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from compressed_tensors.transform import TransformArgs, TransformConfig, TransformScheme

from engine.models import tied_head
from engine.quant import InputRotation, QuantSpec, RotationMatrix, quantizable_layers

GROUP = "v"  # llm-compressor QuIP's name for its input rotation
SUFFIX = f".{GROUP}_input.weight"


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def transform_config(spec: QuantSpec, rotations: dict[str, InputRotation]) -> TransformConfig | None:
    """config.json's transform_config for the rotated layers (None: nothing is rotated)."""
    if not rotations:
        return None
    layers = sorted(rotations)
    orders = {rotation.order for rotation in rotations.values()}
    sylvester = spec.rotation.matrix is RotationMatrix.HADAMARD and all(map(_power_of_two, orders))
    scheme = TransformScheme(type="hadamard" if sylvester else "random-hadamard", head_dim=spec.rotation.block or None,
                             apply=[TransformArgs(targets=layers, location="input"),
                                    TransformArgs(targets=layers, location="weight_input", inverse=True)])
    return TransformConfig(config_groups={GROUP: scheme})


def transform_tensors(rotations: dict[str, InputRotation], dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Each rotated layer's ±1 matrix (exact in any float dtype), as ``{layer}.v_input.weight``, made one
    at a time (vLLM loads each layer's own; the layers of one width share the values)."""
    for name, rotation in rotations.items():
        yield f"{name}{SUFFIX}", rotation.matrix.to(dtype).contiguous()


def transform_bytes(loaded, spec: QuantSpec, dtype: torch.dtype) -> int:
    """What a rotation adds to a checkpoint (an upper bound): the rotated layers' matrices (every
    rotatable layer), and an LM head tied to the embeddings that R1 turns apart (written twice)."""
    if spec.rotation is None:
        return 0
    with loaded.lock:
        tied = tied_head(loaded.model)
    untied = loaded.model.get_output_embeddings().weight.numel() * dtype.itemsize if spec.rotation.residual and tied else 0
    if spec.rotation.online() is None:
        return untied
    return untied + sum((spec.rotation.block or layer.in_features) ** 2 * dtype.itemsize
                        for layer in quantizable_layers(loaded.model, spec) if isinstance(layer.module, torch.nn.Linear))
