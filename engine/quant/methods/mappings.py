"""Which layer inputs an equivalent per-channel rescaling can reach (SmoothQuant, AWQ), found from the
model by probing it, not from lists of module names.

Two kinds of source make an input that can be divided by s, channel by channel, at no cost:
- a norm (RMSNorm, LayerNorm) whose output only quantized layers read: its gain (and bias) ÷ s. A
  layer reads the norm when its input *is* the norm's output tensor (one short forward). The gain is
  probed too: Gemma's norms multiply by (1 + weight), so the fold is (c + w) / s - c.
- a Linear whose output reaches a Linear of its block through channel-wise linear operations only:
  v_proj into o_proj (attention is linear in V), up_proj into down_proj (act(gate) · up), the last
  rows of a fused q/k/v (its v part) into the attention's output projection: its output rows (and
  bias) ÷ s. Candidates are pairs of one block whose widths match; a pair is kept when multiplying
  the producer's output channels by a random d multiplies the consumer's input by exactly d (q into
  o does not: attention is not linear in Q; gate into down does not: the activation is not linear),
  and when the whole model's output is unchanged by the rescaling (nothing else reads the producer).

``renormalizing_norms`` finds, by storage, the norms that read a layer's output again (Gemma 3's and
Qwen 3's q_norm and k_norm; Gemma's post-attention and post-feed-forward norms): AWQ can leave out
the inputs of layers renormalized inside the module it measures, as llm-compressor does for Gemma 3.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import CalibscopeError
from engine.hooks import StopForward, decoder_blocks, headless_forward
from engine.models import LinearLayer, LoadedModel, block_of, find_linear_layers
from engine.quant.apply import QuantizedModel, quantized
from engine.runner import BlockCall, capture_batch

GAIN_OFFSETS = (0.0, 1.0)  # gain = weight (Llama, GPT-2 LayerNorm) or 1 + weight (Gemma)
FLOAT32_TOLERANCE, HALF_TOLERANCE = 1e-3, 5e-2  # relative change that is rounding, not a broken identity


@dataclass(frozen=True)
class ScalingMapping:
    """``layers`` read the output of ``source`` (a norm, or a Linear's last len(s) output rows), so their
    input can be divided by s there and their columns multiplied by s. ``gain_offset``: a norm's c in
    (c + weight) · n(x) (None: a Linear source). ``parent``: the smallest module holding every reader
    (AWQ measures its output)."""

    source: str
    layers: tuple[str, ...]
    gain_offset: float | None = None
    parent: str = ""

    @property
    def is_norm(self) -> bool:
        return self.gain_offset is not None


def tolerance(loaded: LoadedModel) -> float:
    return FLOAT32_TOLERANCE if loaded.model.dtype == torch.float32 else HALF_TOLERANCE


def probe_tokens(loaded: LoadedModel) -> torch.Tensor:
    vocabulary = int(getattr(loaded.model.config, "vocab_size", 256) or 256)
    return (torch.arange(8, device=loaded.device) % vocabulary).view(1, -1)


def is_norm(module: nn.Module) -> bool:
    """A leaf module with a 1-D gain: LayerNorm, RMSNorm and their variants."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, nn.Parameter) and weight.dim() == 1 and not any(True for _ in module.children())


def parent_module(model: nn.Module, names: tuple[str, ...]) -> str:
    """The smallest module holding every one of ``names`` (the layer itself for one), never a
    ModuleList, whose forward is not called as a whole."""
    common = os.path.commonprefix([name.split(".") for name in names])
    while common and isinstance(model.get_submodule(".".join(common)), nn.ModuleList):
        common = common[:-1]
    return ".".join(common)


def output_change(loaded: LoadedModel, plan: QuantizedModel, tokens: torch.Tensor | None = None) -> float:
    """‖logits(with plan) - logits‖ / ‖logits‖ on ``tokens`` (default: a short probe)."""
    tokens = probe_tokens(loaded) if tokens is None else tokens.to(loaded.device)
    with loaded.lock, torch.inference_mode():
        before = loaded.model(input_ids=tokens).logits.float()
        with quantized(loaded, plan):
            after = loaded.model(input_ids=tokens).logits.float()
    return float((after - before).norm() / before.norm().clamp(min=1e-30))


def gain_offset(norm: nn.Module, loaded: LoadedModel) -> float | None:
    """c where the norm computes (c + weight) · n(x) + bias: its output at weight 0 is c · n(x) + bias,
    and the difference of the outputs at weight 1 and 0 is n(x)."""
    width = norm.weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(4, width, generator=generator).to(device=norm.weight.device, dtype=norm.weight.dtype)
    original = norm.weight.data
    with loaded.lock, torch.inference_mode():
        try:
            norm.weight.data = torch.zeros_like(original)
            at_zero = norm(probe).float()
            norm.weight.data = torch.ones_like(original)
            at_one = norm(probe).float()
        finally:
            norm.weight.data = original
    bias = getattr(norm, "bias", None)
    normalized = at_one - at_zero
    centred = at_zero - (bias.float() if isinstance(bias, torch.Tensor) else 0.0)
    offset = float((centred * normalized).sum() / normalized.pow(2).sum().clamp(min=1e-30))
    return next((candidate for candidate in GAIN_OFFSETS if abs(offset - candidate) < 1e-2), None)


def norm_readers(loaded: LoadedModel) -> dict[str, list[str]]:
    """norm -> the layers whose input is that norm's output tensor, in the order they read it."""
    model = loaded.model
    everything = {layer.module: layer.name for layer in find_linear_layers(model, execution_order=False)}
    norms = {module: name for name, module in model.named_modules() if is_norm(module)}
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    readers: dict[str, list[str]] = {}

    def after_norm(module, _args, output):
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (norms[module], output)  # the tensor is kept: its id stays its own

    def before_layer(module, args):
        found = produced.get(id(args[0])) if args else None
        if found is not None and found[1] is args[0] and everything[module] not in readers.setdefault(found[0], []):
            readers[found[0]].append(everything[module])

    handles = [module.register_forward_hook(after_norm) for module in norms]
    handles += [module.register_forward_pre_hook(before_layer) for module in everything]
    probe_with(loaded, handles)
    return readers


def probe_with(loaded: LoadedModel, handles: list) -> None:
    """One forward of the probe through the hooks of ``handles`` (registered), which are removed after."""
    try:
        with loaded.lock, torch.inference_mode():
            loaded.model(input_ids=probe_tokens(loaded))
    finally:
        for handle in handles:
            handle.remove()


def norm_mappings(loaded: LoadedModel, layers: list[LinearLayer]) -> list[ScalingMapping]:
    """The norms whose output only layers of ``layers`` read, with those layers."""
    quantized_names = {layer.name for layer in layers}
    modules = dict(loaded.model.named_modules())
    mappings = []
    for norm, names in norm_readers(loaded).items():
        if not set(names) <= quantized_names:
            continue
        offset = gain_offset(modules[norm], loaded)
        if offset is None:
            raise CalibscopeError(f"The input scales cannot be folded into {norm}: its output is neither weight × normalized "
                                  "input nor (1 + weight) × normalized input. Leave SmoothQuant and AWQ off for this model.")
        mappings.append(ScalingMapping(norm, tuple(names), offset, parent_module(loaded.model, tuple(names))))
    return mappings


def renormalizing_norms(loaded: LoadedModel, layers: list[LinearLayer]) -> dict[str, set[str]]:
    """layer -> the norms that read its output (the same storage, through views): q_norm of q_proj."""
    model = loaded.model
    names = {layer.module: layer.name for layer in layers}
    norms = {module: name for name, module in model.named_modules() if is_norm(module)}
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    found: dict[str, set[str]] = {}

    def after_layer(module, _args, output):
        if isinstance(output, torch.Tensor):
            outputs[output.untyped_storage().data_ptr()] = (names[module], output)  # kept: the storage stays its own

    def before_norm(module, args):
        if args and isinstance(args[0], torch.Tensor) and (hit := outputs.get(args[0].untyped_storage().data_ptr())):
            found.setdefault(hit[0], set()).add(norms[module])

    handles = [module.register_forward_hook(after_layer) for module in names]
    handles += [module.register_forward_pre_hook(before_norm) for module in norms]
    try:
        with loaded.lock, torch.inference_mode():
            headless_forward(model, {"input_ids": probe_tokens(loaded)})
    finally:
        for handle in handles:
            handle.remove()
    return found


def _candidates(loaded: LoadedModel, layers: list[LinearLayer]) -> list[tuple[LinearLayer, LinearLayer]]:
    """(producer, consumer) pairs of one block, the producer called first, whose widths let the
    producer's last output channels be the consumer's input; the consumer among ``layers``."""
    wanted = {layer.name for layer in layers}
    ordered = [layer for layer in find_linear_layers(loaded.model) if layer.kind.is_linear and not layer.is_head]
    pairs = []
    for number, producer in enumerate(ordered):
        for consumer in ordered[number + 1:]:
            width = consumer.in_features
            if (consumer.name in wanted and block_of(producer.name) == block_of(consumer.name) >= 0
                    and producer.out_features >= width and producer.out_features % width == 0):
                pairs.append((producer, consumer))
    return pairs


def _block_inputs(loaded: LoadedModel) -> list[tuple[torch.Tensor, BlockCall]]:
    """Each decoder block's input on the probe and the rest of its call: a block is then probed alone."""
    blocks = decoder_blocks(loaded.model)
    batch = capture_batch(loaded.model, blocks, {"input_ids": probe_tokens(loaded)})
    found, hidden = [], batch.hidden
    for block, call in zip(blocks, batch.calls):
        found.append((hidden, call))
        hidden = call.run(block, hidden)
    return found


def _consumer_input(block: nn.Module, inputs: tuple[torch.Tensor, BlockCall], consumer: LinearLayer,
                    producer: LinearLayer | None = None, factors: torch.Tensor | None = None) -> torch.Tensor:
    """The consumer's input on the block's probe input (float32), with the producer's last output
    channels times ``factors`` when given; the block's forward stops there."""
    seen: dict[str, torch.Tensor] = {}

    def scale_output(_module, _args, output):
        output = output.clone()
        output[..., -factors.numel():] *= factors.to(output.dtype)
        return output

    def grab(_module, args):
        seen["input"] = args[0].float().clone()
        raise StopForward

    handles = [consumer.module.register_forward_pre_hook(grab)]
    if producer is not None:
        handles.append(producer.module.register_forward_hook(scale_output))
    try:
        inputs[1].run(block, inputs[0])
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen["input"]


def _rescaling(pairs: list[tuple[LinearLayer, LinearLayer, torch.Tensor]]) -> QuantizedModel:
    """The float model with each producer's last rows ÷ d (and bias) and its consumer's columns × d."""
    plan = QuantizedModel()
    for producer, consumer, factors in pairs:
        plan.row_scales[producer.name], plan.column_scales[consumer.name] = factors, factors
        bias = getattr(producer.module, "bias", None)
        if isinstance(bias, torch.Tensor):
            divided = bias.detach().float().clone()
            divided[-factors.numel():] /= factors.to(divided.device)
            plan.floats[f"{producer.name}.bias"] = divided.to(bias.dtype)
    return plan


def linear_mappings(loaded: LoadedModel, layers: list[LinearLayer]) -> list[ScalingMapping]:
    """Linear -> Linear mappings (see the module's docstring), the consumer among ``layers``."""
    candidates = _candidates(loaded, layers)
    if not candidates:
        return []
    generator = torch.Generator().manual_seed(0)
    limit = tolerance(loaded)
    kept, unchanged = [], {}
    blocks = decoder_blocks(loaded.model)
    with loaded.lock, torch.inference_mode():
        inputs = _block_inputs(loaded)
        for producer, consumer in candidates:
            index, width = block_of(consumer.name), consumer.in_features
            factors = torch.exp((torch.rand(width, generator=generator) * 2 - 1) * 0.7).to(loaded.device)  # in [0.5, 2]
            if consumer.name not in unchanged:
                unchanged[consumer.name] = _consumer_input(blocks[index], inputs[index], consumer)
            expected = unchanged[consumer.name] * factors
            seen = _consumer_input(blocks[index], inputs[index], consumer, producer, factors)
            if float((seen - expected).norm() / expected.norm().clamp(min=1e-30)) <= limit:
                kept.append((producer, consumer, factors))
    if kept and output_change(loaded, _rescaling(kept)) > limit:  # something else reads a producer: find which
        kept = [pair for pair in kept if output_change(loaded, _rescaling([pair])) <= limit]
    return [ScalingMapping(producer.name, (consumer.name,), None, parent_module(loaded.model, (consumer.name,)))
            for producer, consumer, _ in kept]
