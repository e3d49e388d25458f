"""Hessians of half-precision models against a float64 reference of the very inputs the layers saw.

A model wide enough (1,024 inputs, 2,048 for the down projection) that the upper-triangle GEMM runs
in several strips. bf16 and fp16 products are exact in float32, so a float32 accumulation of them
must match float64 sums of the captured inputs to 1e-5 relative: a half-precision accumulation
would miss that by orders of magnitude. On CUDA (marked ``gpu``) the per-batch path (the router
picking the real tokens, the Hessian and statistics accumulators) also runs under
``torch.cuda.set_sync_debug_mode("error")``: one read-back to the host in it fails the test. On the
CPU the same checks run with a bf16 model (the test's own logic is exercised everywhere)."""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engine import ModelSpec, load_model
from engine.hooks import Side, observing
from engine.models import find_linear_layers
from engine.models.tiny import byte_tokenizer
from engine.runner.router import Router, batch_tokens
from engine.stats import ActivationAccumulator, HessianSpec
from engine.stats.hessian import HessianAccumulator, upper_strip
from engine.stats.hessian_report import collect_hessians
from tests.test_runner import calibration_for

WIDE = {"hidden_size": 1024, "intermediate_size": 2048}
LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def wide_folder(tmp_path_factory):
    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **WIDE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("wide-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def captured_inputs(loaded, calibration, names):
    """Each layer's input, real tokens only, batch by batch (the pass's own batching), and each batch's tokens."""
    modules = dict(loaded.model.named_modules())
    seen = {name: [] for name in names}
    batches = []
    with torch.inference_mode():
        for rows, batch in zip(calibration.batch_indices(4, by_length=True), calibration.batches(4, by_length=True)):
            real = batch["attention_mask"].bool().to(loaded.device)
            points = [(modules[name], Side.INPUT, lambda x, name=name, real=real: seen[name].append(x[real].clone()))
                      for name in names]
            with observing(points):
                loaded.model.model(**{k: v.to(loaded.device) for k, v in batch.items()})
            batches.append(batch_tokens(list(rows), batch["attention_mask"]).to(loaded.device))
    return seen, batches


def float64_hessian(rows: list[torch.Tensor]) -> torch.Tensor:
    x = torch.cat(rows).double()
    return 2 * x.T @ x / x.shape[0]


def assert_matches(hessian: torch.Tensor, reference: torch.Tensor) -> None:
    hessian, reference = hessian.double().cpu(), reference.cpu()
    torch.testing.assert_close(hessian, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


def check(folder, device: str, dtype: str) -> None:
    loaded = load_model(ModelSpec(str(folder), device=device, dtype=dtype))
    assert str(next(loaded.model.parameters()).dtype) == f"torch.{dtype}"
    assert all(upper_strip(channels) < channels for channels in WIDE.values())  # the multi-strip path
    calibration = calibration_for(loaded)
    inputs, batches = captured_inputs(loaded, calibration, LAYERS)
    references = {name: float64_hessian(rows) for name, rows in inputs.items()}
    for execution in ("whole-model", "block-by-block"):
        report = collect_hessians(loaded, calibration, HessianSpec(batch_size=4, execution=execution, diagnostics="none"))
        for name in LAYERS:
            assert report.hessian(name).dtype == torch.float32
            assert_matches(report.hessian(name), references[name])
    # the per-batch path on its own: router, Hessian and statistics accumulators, no read-back
    layers = {layer.name: layer for layer in find_linear_layers(loaded.model) if layer.name in LAYERS}
    hessians = Router(lambda channels, where: HessianAccumulator(channels, storage=where), share_inputs=False)
    stats = Router(lambda channels, where: ActivationAccumulator(channels, device=where), share_inputs=False)
    guard = torch.cuda.set_sync_debug_mode if device == "cuda" else None
    with SyncGuard(guard) if guard else nullcontext():
        for number, tokens in enumerate(batches):
            for router in (hessians, stats):
                router.start_batch(tokens)
                for name in LAYERS:
                    router._update(name, layers[name], padded(inputs[name][number], tokens))
                router.end_batch()
    for name in LAYERS:
        assert_matches(hessians.accumulators[name].result(), references[name])
        assert stats.accumulators[name].tokens == sum(rows.shape[0] for rows in inputs[name])


def padded(real: torch.Tensor, tokens) -> torch.Tensor:
    """The [batch, time, channels] tensor a layer sees, its real tokens where the batch's mask says."""
    batch, width = len(tokens.index.lengths), max(tokens.index.lengths)
    full = torch.zeros(batch * width, real.shape[-1], dtype=real.dtype, device=real.device)
    keep = tokens.keep if tokens.keep is not None else torch.arange(batch * width, device=real.device)
    full.index_copy_(0, keep, real)
    return full.view(batch, width, -1)


class SyncGuard:
    """torch.cuda.set_sync_debug_mode('error') for the block, back to the default after it."""

    def __init__(self, setter) -> None:
        self.setter = setter

    def __enter__(self):
        self.setter("error")

    def __exit__(self, *exc):
        self.setter("default")


def test_bfloat16_hessians_on_the_cpu_equal_a_float64_reference(wide_folder):
    check(wide_folder, "cpu", "bfloat16")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_half_precision_hessians_equal_a_float64_reference_without_a_sync(wide_folder, dtype):
    check(wide_folder, "cuda", dtype)
