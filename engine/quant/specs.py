"""QuantSpec: which weights and activations to quantize (simulated), how, and with which ranges."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import Enum

from engine.errors import SpecError
from engine.quant.formats.floats import NumberFormat
from engine.specs import choice


class WeightMethod(str, Enum):
    """How weights are rounded; the values are the labels the dashboard shows."""

    NONE = "none"
    RTN = "rtn"
    GPTQ = "gptq"


class ActOrder(str, Enum):
    """GPTQ's column order. none: the weight's own order. static (llm-compressor "weight"): group
    grids fixed in the original column order, columns quantized by decreasing Hessian diagonal;
    nothing to reorder at inference. dynamic (llm-compressor "group", the reference's act-order):
    groups formed in the permuted order, so inference needs the permutation (``g_idx``).
    group-aware (GPTQModel's act_group_aware, its default): the original groups kept whole, taken
    by decreasing maximum H_ii, columns within each by decreasing H_ii, each group's grid found when
    it starts; nothing to reorder at inference."""

    NONE = "none"
    STATIC = "static"
    DYNAMIC = "dynamic"
    GROUP_AWARE = "group-aware"


class CholeskyFailure(str, Enum):
    """What GPTQ does when a damped Hessian does not factorize. tenfold (calibscope): raise the
    damping tenfold until it does (up to 1.0). stepwise (GPTQModel's damp_auto_increment): add
    ``damping_step`` until it does (below 1.0). rtn (llm-compressor): that layer is rounded to
    nearest instead, and the run says which. raise: stop, naming the layer, with what to do."""

    TENFOLD = "tenfold"
    STEPWISE = "stepwise"
    RTN = "rtn"
    RAISE = "raise"


class RangeMethod(str, Enum):
    """How a static activation range (or NVFP4's global scale) is chosen from the statistics:
    minmax (the set's |max|), percentile (of |x|), mse (the clip with the least expected rounding
    plus clipping error over the |x| histogram), entropy (the clip whose quantized histogram is
    nearest the data's in KL divergence: TensorRT's and ModelOpt's calibrator), headroom (NVFP4:
    ModelOpt's global scale from a low percentile of the per-block maxima, with room above them)."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    ENTROPY = "entropy"
    HEADROOM = "headroom"


class Granularity(str, Enum):
    """One activation range per tensor or per input channel (static, from the calibration set), or
    one per token, found at inference (dynamic: nothing calibrated)."""

    TENSOR = "tensor"
    CHANNEL = "channel"
    TOKEN = "token"


DEFAULT_ACT_ORDER = ActOrder.STATIC


class AwqScaling(str, Enum):
    """What AWQ's grid searches (llm-compressor's duo_scaling): "inputs and weights" (its default,
    True): s = x̄^r / w̄^(1-r) for r in [0, 1], with the identity first; "inputs" (False): s = x̄^r;
    "both": half the points each way."""

    DUO = "inputs and weights"
    INPUTS = "inputs"
    BOTH = "both"


@dataclass(frozen=True)
class AwqSpec:
    """AWQ before the weights are rounded (engine/quant/methods/awq.py). ``grid``: points searched per mapping
    (llm-compressor's n_grid); ``scaling``: see AwqScaling; ``clip``: AutoAWQ's clip search after the
    scaling (llm-compressor has none); ``renormalized``: also scale the inputs of layers whose output a
    norm inside the measured module reads again (Gemma 3's and Qwen 3's q_norm and k_norm), as the paper
    and llm-compressor's default mappings do; off, they are left out, as llm-compressor's Gemma 3
    mappings do (its issue 2522). ``batch_size``: sequences per batch of its pass and of the search's runs
    (the result does not depend on it; a point of the grid is cut short after a batch once it is beaten,
    so small batches skip more: 2 took 206 s for the builtin model's 32 x 512 windows on this project's
    CPU, 1, 4 and 8 took 233, 216 and 237 s)."""

    grid: int = 20
    scaling: AwqScaling = AwqScaling.DUO
    clip: bool = False
    renormalized: bool = True
    batch_size: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "scaling", choice(AwqScaling, self.scaling, "AWQ scaling"))
        if not 4 <= self.grid <= 200:
            raise SpecError(f"AWQ grid={self.grid}: use 4 to 200 points (llm-compressor's default is 20).")
        if self.batch_size < 1:
            raise SpecError("AWQ's batch_size must be at least 1.")

    def label(self) -> str:
        extras = [f"{self.grid} points"] if self.grid != 20 else []
        extras += [f"{self.scaling.value} scaled"] if self.scaling is not AwqScaling.DUO else []
        extras += ["clip"] if self.clip else []
        extras += ["no renormalized inputs"] if not self.renormalized else []
        return "AWQ" + (f" ({', '.join(extras)})" if extras else "")


@dataclass(frozen=True)
class WeightSpec:
    """Weights: round-to-nearest or GPTQ on a uniform grid of ``bits``.

    group_size: one scale per ``group_size`` input columns of each output row (0 = per output
    channel). GPTQ: ``block_size`` columns are processed at once; ``damping`` is the fraction of the
    mean Hessian diagonal added to it (``on_failure`` says what happens when a Cholesky still fails,
    ``damping_step`` is the stepwise policy's increment); ``act_order`` orders the columns (see
    ActOrder; True and False are read as dynamic and none). The defaults are llm-compressor's
    GPTQModifier (W4A16: act order static, damping 0.01, block 128, RTN where Cholesky fails), the
    GPTQ most users ship; PEER_GPTQ has GPTQModel's and the reference's. ``true_sequential`` (block
    by block with propagation only): each group of a block's layers that read one input (q/k/v, o,
    gate/up, down) gets its Hessian with the groups before it already quantized, as GPTQModel and
    optimum do by default; off, the block's Hessians all come from its float weights (llm-compressor)."""

    method: WeightMethod = WeightMethod.RTN
    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    block_size: int = 128
    damping: float = 0.01
    act_order: ActOrder = DEFAULT_ACT_ORDER
    on_failure: CholeskyFailure = CholeskyFailure.RTN
    damping_step: float = 0.01
    true_sequential: bool = False
    format: NumberFormat = NumberFormat.INT

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", choice(WeightMethod, self.method, "weight method"))
        object.__setattr__(self, "format", choice(NumberFormat, self.format, "weight format"))
        if self.format.is_float:
            self._check_float()
        object.__setattr__(self, "on_failure", choice(CholeskyFailure, self.on_failure, "on_failure"))
        if not 0 < self.damping_step < 1:
            raise SpecError(f"damping_step={self.damping_step} must be in (0, 1); GPTQModel's is 0.01.")
        if isinstance(self.act_order, bool):  # the boolean of earlier releases: the reference's act-order
            object.__setattr__(self, "act_order", ActOrder.DYNAMIC if self.act_order else ActOrder.NONE)
        object.__setattr__(self, "act_order", choice(ActOrder, self.act_order, "act_order"))
        if not 2 <= self.bits <= 8:
            raise SpecError(f"weight bits={self.bits} is not supported; use 2 to 8.")
        if self.group_size < (-1 if self.format is NumberFormat.FP8 else 0) or self.block_size < 1:
            raise SpecError("group_size must be 0 (per channel) or positive (-1, per tensor, for FP8 weights), "
                            "block_size at least 1.")
        if not 0 < self.damping <= 1:
            raise SpecError(f"damping={self.damping} must be in (0, 1]; GPTQ's default is 0.01.")

    def _check_float(self) -> None:
        """FP8 (per tensor: group_size -1, or per channel: 0), NVFP4 (blocks of 16) and MXFP4 (blocks
        of 32) weights: symmetric, their format's bits, rounded to nearest."""
        fmt = self.format
        if self.method is WeightMethod.GPTQ:
            raise SpecError(f"{fmt.value} weights are rounded to nearest here (llm-compressor's QuantizationModifier); "
                            "GPTQ rounds to integer grids: use method 'rtn' for floating-point formats.")
        if fmt.block:
            object.__setattr__(self, "group_size", fmt.block)
        elif self.group_size not in (0, -1):
            raise SpecError(f"FP8 weights take one scale per tensor (group_size -1) or per output channel (0), "
                            f"not groups of {self.group_size}.")
        if not self.symmetric:
            raise SpecError(f"{fmt.value} weights are symmetric (compressed-tensors has no zero point for them).")
        object.__setattr__(self, "bits", fmt.bits)

    @property
    def enabled(self) -> bool:
        return self.method is not WeightMethod.NONE

    @property
    def needs_hessians(self) -> bool:
        return self.method is WeightMethod.GPTQ

    def label(self) -> str:
        if not self.enabled:
            return "float weights"
        if self.format.is_float:
            scope = {-1: "per-tensor", 0: "per-channel"}.get(self.group_size, "")
            return (f"W {self.format.value.upper()}{' ' + scope if scope and not self.format.block else ''} "
                    f"{self.method.value.upper()}")
        group = f"g{self.group_size}" if self.group_size else "per-channel"
        order = f" act-order {self.act_order.value}" if self.needs_hessians and self.act_order is not DEFAULT_ACT_ORDER else ""
        return f"W{self.bits} {group}{'' if self.symmetric else ' asym'} {self.method.value.upper()}{order}"


@dataclass(frozen=True)
class ActivationSpec:
    """Static (calibrated) quantization of every selected layer's input.

    range_method: minmax (the calibration set's |max|, or min and max when asymmetric), percentile
    (of |x|, from the streamed histograms), mse (the clipping that minimizes the expected squared
    error of clipping plus rounding over the histogram). granularity: one range per tensor or per
    input channel."""

    bits: int = 0
    range_method: RangeMethod = RangeMethod.MINMAX
    percentile: float = 99.99
    granularity: Granularity = Granularity.TENSOR
    symmetric: bool = True
    format: NumberFormat = NumberFormat.INT

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", choice(NumberFormat, self.format, "activation format"))
        if self.format.is_float:
            object.__setattr__(self, "bits", self.format.bits)
        if self.bits and not 2 <= self.bits <= 16:
            raise SpecError(f"activation bits={self.bits} is not supported; use 0 (off) or 2 to 16.")
        object.__setattr__(self, "range_method", choice(RangeMethod, self.range_method, "range method"))
        object.__setattr__(self, "granularity", choice(Granularity, self.granularity, "granularity"))
        if self.format is NumberFormat.MXFP4:  # its block scales are found at inference: nothing to calibrate
            object.__setattr__(self, "granularity", Granularity.TOKEN)
        if not 0 < self.percentile <= 100:
            raise SpecError(f"percentile={self.percentile} must be in (0, 100], e.g. 99.99.")
        self._check_method()

    def _check_method(self) -> None:
        method, fmt = self.range_method, self.format
        if not self.symmetric and (method is not RangeMethod.MINMAX or fmt.is_float):
            raise SpecError("Asymmetric activation ranges are integer min/max ranges: use range method 'minmax' with "
                            "the int format, or keep them symmetric (histograms are of |x|; float formats are symmetric).")
        if self.granularity is Granularity.CHANNEL and (method in (RangeMethod.MSE, RangeMethod.ENTROPY) or fmt.is_float):
            raise SpecError("Per-channel static ranges are integer min/max or percentile ranges; MSE and entropy are "
                            "searched per tensor (over its 2,048-bin histogram) and float formats scale per tensor.")
        if self.granularity is Granularity.TOKEN and fmt is NumberFormat.NVFP4:
            raise SpecError("NVFP4 inputs scale each block of 16 at inference under one calibrated global scale: "
                            "use granularity 'tensor' (the global scale's range method applies).")
        if method is RangeMethod.HEADROOM and fmt is not NumberFormat.NVFP4:
            raise SpecError("Headroom calibration sets NVFP4's global scale; for int and FP8 use minmax, percentile, "
                            "mse or entropy.")
        if fmt is NumberFormat.NVFP4 and method in (RangeMethod.MSE, RangeMethod.ENTROPY):
            raise SpecError("NVFP4's global scale is calibrated with minmax, percentile or headroom (its error depends "
                            "on each block's own scale, which is found at inference).")

    @property
    def enabled(self) -> bool:
        return self.bits > 0

    @property
    def dynamic(self) -> bool:
        """Scales found at inference from each token (or MXFP4 block): nothing is calibrated."""
        return self.granularity is Granularity.TOKEN

    def label(self) -> str:
        if not self.enabled:
            return "float activations"
        method = f"p{self.percentile:g}" if self.range_method is RangeMethod.PERCENTILE else self.range_method.value
        name = f"A{self.bits}" if not self.format.is_float else f"A {self.format.value.upper()}"
        if self.format is NumberFormat.MXFP4:
            return f"{name} dynamic per-32"
        if self.dynamic:
            return f"{name} dynamic per-token"
        if self.format is NumberFormat.NVFP4:
            return f"{name} global {method}"
        return f"{name} static per-{self.granularity.value} {method}"


class ExpertCalibration(str, Enum):
    """Whose tokens an MoE expert's Hessians are made from: the ones the router sent it, or every
    token of its block (llm-compressor's moe_calibrate_all_experts; the forward stays the router's)."""

    ROUTER = "router"
    ALL = "all-experts"


class ExpertFallback(str, Enum):
    """What an expert with too few routed tokens gets: round to nearest (its grids from its weights)
    or the Hessians of every token."""

    RTN = "rtn"
    ALL = "all-experts"


@dataclass(frozen=True)
class ExpertPolicy:
    """How MoE experts are calibrated (engine/quant/methods/experts.py). ``min_tokens``: below it an expert
    takes ``fallback`` (0: its input width, below which its Hessian is rank-deficient)."""

    calibration: ExpertCalibration = ExpertCalibration.ROUTER
    min_tokens: int = 0
    fallback: ExpertFallback = ExpertFallback.RTN

    def __post_init__(self) -> None:
        object.__setattr__(self, "calibration", choice(ExpertCalibration, self.calibration, "expert calibration"))
        object.__setattr__(self, "fallback", choice(ExpertFallback, self.fallback, "expert fallback"))
        if self.min_tokens < 0:
            raise SpecError(f"min_tokens={self.min_tokens} must be 0 (the expert's input width) or more.")

    @property
    def needs_all_tokens(self) -> bool:
        return self.calibration is ExpertCalibration.ALL or self.fallback is ExpertFallback.ALL

    def label(self) -> str:
        if self.calibration is ExpertCalibration.ALL:
            return "experts on all tokens"
        fallback = "all tokens" if self.fallback is ExpertFallback.ALL else "RTN"
        threshold = f"{self.min_tokens} tokens" if self.min_tokens else "input width"
        return f"experts below {threshold}: {fallback}"


class Allocation(str, Enum):
    """How mixed precision chooses each layer group's bits. output error: the predicted loss is the
    group's relative output change on the calibration tokens (from its Hessians), summed over its
    layers; divergence: that, scaled per group by the KL divergence from float measured on the
    calibration text with only that group at the lowest bits (one forward per group); first and
    last blocks: the usual rule, the outermost blocks get the most bits; attention values and MLP
    down: llama.cpp's Q4_K_M rule (more bits for attn_v and ffn_down in the first and last eighth
    of the blocks and every third between), kept to whole groups (vLLM fuses q/k/v)."""

    OUTPUT_ERROR = "output error"
    DIVERGENCE = "divergence"
    EDGES = "first and last blocks"
    LLAMA_CPP = "attention values and MLP down"

    @property
    def measured(self) -> bool:
        return self in (Allocation.OUTPUT_ERROR, Allocation.DIVERGENCE)


@dataclass(frozen=True)
class MixedSpec:
    """Mixed precision (engine/quant/methods/mixed.py): each group of layers that read one input (q/k/v,
    gate/up: vLLM fuses them and needs one scheme for the group) takes one of ``bits`` for the spec's
    weights, so that the quantized layers average at most ``budget`` bits per weight, scales and zero
    points included, chosen as ``allocation`` says (the measured ones exactly: a knapsack over the groups)."""

    budget: float = 4.5
    bits: tuple[int, ...] = (3, 4, 8)
    allocation: Allocation = Allocation.OUTPUT_ERROR

    def __post_init__(self) -> None:
        object.__setattr__(self, "allocation", choice(Allocation, self.allocation, "allocation"))
        object.__setattr__(self, "bits", tuple(sorted({int(b) for b in self.bits})))
        if len(self.bits) < 2 or not all(2 <= b <= 8 for b in self.bits):
            raise SpecError(f"Mixed precision chooses among at least two weight widths of 2 to 8 bits, not {list(self.bits)}.")
        if not self.bits[0] <= self.budget <= self.bits[-1] + 1:
            raise SpecError(f"A budget of {self.budget:g} bits per weight is outside the widths chosen from "
                            f"({self.bits[0]} to {self.bits[-1]} bits, plus their scales).")

    def label(self) -> str:
        return f"mixed W{{{','.join(map(str, self.bits))}}} at {self.budget:g} bits/weight ({self.allocation.value})"


class KVRange(str, Enum):
    """How an FP8 KV cache's scale is chosen: constant (scale 1: the cache holds the values as they
    are cast, ModelOpt's ``fp8_cast`` and what vLLM uses when a checkpoint has no scales), or from the
    cached keys' and values' statistics on the calibration set as activation ranges are (minmax:
    llm-compressor's; percentile, mse, entropy)."""

    CONSTANT = "constant"
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    ENTROPY = "entropy"


class KVStrategy(str, Enum):
    """One scale per layer for the keys and one for the values (tensor), or one per KV head (attn_head:
    compressed-tensors' and vLLM's name)."""

    TENSOR = "tensor"
    HEAD = "attn_head"


@dataclass(frozen=True)
class KVCacheSpec:
    """An FP8 e4m3 KV cache: keys (after the key norm and the rotary embedding) and values rounded as
    they are cached, with static scales chosen by ``range_method`` per ``strategy``."""

    strategy: KVStrategy = KVStrategy.TENSOR
    range_method: KVRange = KVRange.MINMAX
    percentile: float = 99.99

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", choice(KVStrategy, self.strategy, "kv_cache strategy"))
        object.__setattr__(self, "range_method", choice(KVRange, self.range_method, "kv_cache range_method"))
        if not 0.0 < self.percentile <= 100.0:
            raise SpecError(f"The KV cache's percentile {self.percentile} must be in (0, 100].")

    @property
    def calibrated(self) -> bool:
        return self.range_method is not KVRange.CONSTANT

    def label(self) -> str:
        if not self.calibrated:
            return "KV FP8 constant scale"
        method = f"p{self.percentile:g}" if self.range_method is KVRange.PERCENTILE else self.range_method.value
        return f"KV FP8 per-{'head' if self.strategy is KVStrategy.HEAD else 'tensor'} {method}"


class Rotation(str, Enum):
    """Which quantized layers get their input rotated before it is quantized (engine/quant/methods/rotation.py):
    x -> x R at inference and W -> W R fused into the weight, so the float layer computes the same,
    as llm-compressor's QuIP "v" rotation does (compressed-tensors' input and weight_input transforms).
    every layer: all of them (QuIP); where it helps: only the input groups whose quantization error on
    the calibration set the rotation lowers; none: no input is rotated online (only the fused
    rotations, ``RotationSpec.residual`` and ``heads``, turn the model)."""

    NONE = "none"
    EVERY_LAYER = "every layer"
    WHERE_IT_HELPS = "where it helps"


class RotationMatrix(str, Enum):
    """random-hadamard: compressed-tensors' random Hadamard (a known Hadamard times random signs, one
    per width, from the seed), llm-compressor's QuIP default; hadamard: a deterministic one
    (Sylvester's, times Paley's for widths that are not powers of two)."""

    RANDOM_HADAMARD = "random-hadamard"
    HADAMARD = "hadamard"


@dataclass(frozen=True)
class RotationSpec:
    """Hadamard rotations of quantized layers' inputs. ``block``: rotate consecutive blocks of this
    many channels (compressed-tensors' head_dim, llm-compressor's transform_block_size; 0: the whole
    input, which every quantized width must then have a Hadamard matrix for); ``seed``: the random
    Hadamard's generator seed (None: compressed-tensors' default generator, as llm-compressor's QuIP
    runs it)."""

    placement: Rotation = Rotation.EVERY_LAYER
    matrix: RotationMatrix = RotationMatrix.RANDOM_HADAMARD
    block: int = 0
    seed: int | None = None
    residual: bool = False
    heads: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement", choice(Rotation, self.placement, "rotation placement"))
        object.__setattr__(self, "matrix", choice(RotationMatrix, self.matrix, "rotation matrix"))
        if self.block < 0 or (self.block and self.block % 4 and self.block not in (1, 2)):
            raise SpecError(f"rotation block={self.block}: a Hadamard block has 1, 2 or a multiple of 4 channels "
                            "(e.g. 16 for NVFP4's blocks, 32 for MXFP4's, the head dimension); 0 rotates the whole input.")
        if self.placement is Rotation.NONE and not self.fused:
            raise SpecError("A rotation with placement 'none' and neither the residual stream (R1) nor the heads (R2) "
                            "rotates nothing: choose where inputs are rotated, or residual / heads, or no rotation.")

    @property
    def fused(self) -> bool:
        """Whether SpinQuant's offline rotations turn the float model first (engine/quant/methods/fused_rotation.py)."""
        return self.residual or self.heads

    def online(self) -> RotationSpec | None:
        """The inputs' online rotation alone, made on the model the fused rotations turned (None: none)."""
        return None if self.placement is Rotation.NONE else replace(self, residual=False, heads=False)

    def label(self) -> str:
        matrix = "Hadamard" if self.matrix is RotationMatrix.HADAMARD else "random Hadamard"
        fused = "+".join(name for name, on in (("R1", self.residual), ("R2", self.heads)) if on)
        if self.placement is Rotation.NONE:
            return f"{fused} fused {matrix} rotation{f' in blocks of {self.block}' if self.block else ''}"
        block = f" in blocks of {self.block}" if self.block else ""
        where = ", where it helps" if self.placement is Rotation.WHERE_IT_HELPS else ""
        return f"{fused + ' fused + ' if fused else ''}{matrix} rotation{block}{where}"


@dataclass(frozen=True)
class QuantSpec:
    """Weights and activations of the layers whose module name matches ``name_pattern`` (all
    quantizable layers but the LM head by default; the head shares its weight with the embedding
    in tied models, which quantizers keep in float). ``smoothing``: SmoothQuant's α (0 to 1; None: off),
    the inputs' outliers moved into the weights before both are quantized (engine/quant/methods/smoothing.py).
    ``awq``: AWQ's input scales searched on the calibration set before the weights are rounded
    (engine/quant/methods/awq.py; None: off). ``experts``: how MoE experts are calibrated (their weights are
    quantized with ``weights``; routers stay float)."""

    weights: WeightSpec = field(default_factory=WeightSpec)
    activations: ActivationSpec = field(default_factory=ActivationSpec)
    name_pattern: str = ""
    smoothing: float | None = None
    awq: AwqSpec | None = None
    experts: ExpertPolicy = field(default_factory=ExpertPolicy)
    mixed: MixedSpec | None = None
    kv_cache: KVCacheSpec | None = None
    rotation: RotationSpec | None = None

    def __post_init__(self) -> None:
        try:
            re.compile(self.name_pattern)
        except re.error as error:
            raise SpecError(f"name_pattern {self.name_pattern!r} is not a valid regular expression ({error}).") from None
        if isinstance(self.kv_cache, dict):  # a run config's [quantize.kv_cache] table
            object.__setattr__(self, "kv_cache", KVCacheSpec(**self.kv_cache))
        if not self.weights.enabled and not self.activations.enabled and self.kv_cache is None:
            raise SpecError("Nothing to quantize: choose a weight method, activation bits, the KV cache, or several.")
        if self.smoothing is not None:
            self._check_smoothing()
        if isinstance(self.awq, dict):  # a run config's [quantize.awq] table
            object.__setattr__(self, "awq", AwqSpec(**self.awq))
        if isinstance(self.experts, dict):  # a run config's [quantize.experts] table
            object.__setattr__(self, "experts", ExpertPolicy(**self.experts))
        if self.awq is not None:
            self._check_awq()
        if isinstance(self.mixed, dict):  # a run config's [quantize.mixed] table
            object.__setattr__(self, "mixed", MixedSpec(**self.mixed))
        if self.mixed is not None:
            self._check_mixed()
        if isinstance(self.rotation, dict):  # a run config's [quantize.rotation] table
            object.__setattr__(self, "rotation", RotationSpec(**self.rotation))
        if self.rotation is not None:
            self._check_rotation()

    def _check_rotation(self) -> None:
        if not self.weights.enabled and not self.activations.enabled:
            raise SpecError("A rotation turns the inputs and weights of quantized layers: quantize weights or inputs too.")
        if self.smoothing is not None or self.awq is not None or self.mixed is not None:
            raise SpecError("Rotations are not combined with SmoothQuant, AWQ or mixed precision here (each changes the "
                            "inputs the other was chosen for): choose one.")

    def _check_mixed(self) -> None:
        weights = self.weights
        if not weights.enabled or weights.format.is_float:
            raise SpecError("Mixed precision chooses integer weight widths per layer group: choose RTN or GPTQ int weights.")
        if self.activations.enabled or self.smoothing is not None or self.awq is not None:
            raise SpecError("Mixed precision is weight-only here (the widths of W4A16-style schemes): set the activations to "
                            "float and leave SmoothQuant and AWQ off.")

    def _check_awq(self) -> None:
        weights = self.weights
        if self.smoothing is not None:
            raise SpecError("AWQ and SmoothQuant both rescale the same inputs: choose one.")
        if not weights.enabled or weights.format.is_float:
            raise SpecError("AWQ scales the weights before they are rounded to an integer grid: choose RTN or GPTQ int "
                            "weights (W4 g128, llm-compressor's W4A16 or W4A16_ASYM), or leave AWQ off.")
        if self.activations.enabled:
            raise SpecError("AWQ here is weight-only (W4A16, as llm-compressor and AutoAWQ run it): set the activations to "
                            "float, or use SmoothQuant for W8A8.")

    def _check_smoothing(self) -> None:
        inputs = self.activations
        if not 0.0 <= self.smoothing <= 1.0:
            raise SpecError(f"SmoothQuant's alpha={self.smoothing} must be between 0 and 1 (0.5 is the paper's and "
                            "llm-compressor's default).")
        if not (self.weights.enabled and inputs.enabled and inputs.format in (NumberFormat.INT, NumberFormat.FP8)):
            raise SpecError("SmoothQuant moves input outliers into the weights before W8A8 or FP8: quantize both the weights "
                            "and the inputs (int or FP8), or leave SmoothQuant off.")
        per_channel = inputs.granularity is Granularity.CHANNEL and inputs.range_method is RangeMethod.PERCENTILE
        if not inputs.dynamic and inputs.range_method is not RangeMethod.MINMAX and not per_channel:
            raise SpecError("After SmoothQuant the inputs' ranges follow from the per-channel statistics only for min/max "
                            "(and per-channel percentiles); the whole-tensor histograms that percentile, MSE and entropy "
                            "read describe the inputs before smoothing. Use min/max or dynamic inputs with SmoothQuant.")

    def label(self) -> str:
        parts = [part.label() for part in (self.weights, self.activations) if part.enabled]
        smoothing = [f"SmoothQuant α{self.smoothing:g}"] if self.smoothing is not None else []
        awq = [self.awq.label()] if self.awq is not None else []
        experts = [f"({self.experts.label()})"] if self.experts != ExpertPolicy() else []
        mixed = f", {self.mixed.label()}" if self.mixed is not None else ""
        kv = [self.kv_cache.label()] if self.kv_cache is not None else []
        rotation = [self.rotation.label()] if self.rotation is not None else []
        return " + ".join(rotation + smoothing + awq + parts + kv) + mixed + (" " + experts[0] if experts else "")

    @property
    def needs_hessians(self) -> bool:
        """GPTQ's, and a measured mixed-precision allocation's (its output errors)."""
        return self.weights.needs_hessians or (self.mixed is not None and self.mixed.allocation.measured)

    @property
    def needs_stats(self) -> bool:
        """Static input ranges' (a rotation collects its rotated inputs' own) and SmoothQuant's."""
        static = self.activations.enabled and not self.activations.dynamic
        return (static and self.rotation is None) or self.smoothing is not None

    @property
    def needs_calibration(self) -> bool:
        """AWQ searches its scales on the calibration set itself (its own pass); the divergence
        allocation of mixed precision measures each layer group on its text."""
        return self.own_pass is not None

    @property
    def own_pass(self) -> str | None:
        """What runs its own pass on the calibration set, in words (None: nothing does)."""
        if self.awq is not None:
            return "AWQ"
        if self.mixed is not None and self.mixed.allocation is Allocation.DIVERGENCE:
            return "The divergence allocation"
        if self.kv_cache is not None and self.kv_cache.calibrated:
            return "The KV cache's calibration"
        if self.rotation is not None:
            return "The rotation"
        return None

    @property
    def own_pass_forwards(self) -> int:
        """About how many forwards of the calibration set the scheme's own pass costs (for time
        estimates): AWQ's pass is one, and its search runs each measured module again per grid point,
        about three quarters of a forward (an MLP's share on the builtin model)."""
        forwards = 2 + 3 * self.awq.grid // 4 if self.awq is not None else 0
        rotation = 2 if self.rotation is not None and self.rotation.online() is not None else 0  # rotated statistics, probe
        if self.rotation is not None and self.rotation.fused:
            rotation += 2  # the turned model's statistics and Hessians collected again
        return forwards + rotation + (1 if self.kv_cache is not None and self.kv_cache.calibrated else 0)

    @property
    def can_run_sequentially(self) -> bool:
        """GPTQ weights with float activations and cache: what block-by-block (sequential) GPTQ quantizes."""
        return (self.weights.needs_hessians and not self.activations.enabled and self.awq is None and self.mixed is None
                and self.kv_cache is None and self.rotation is None)


GPTQ, RTN = WeightMethod.GPTQ, WeightMethod.RTN
# The GPTQ W4 g128 each tool ships by default; llm-compressor's is calibscope's default ("W4 g128
# GPTQ"). Their Hessian scalings (llm-compressor: per sequence; GPTQModel: per token; the reference:
# per sequence) give the same GPTQ: the result does not depend on H's scale, and calibscope never
# counts padding. Exported Hessians record theirs (hessian_report.NORMALISATION).
PEER_GPTQ = {
    "gptqmodel": WeightSpec(GPTQ, 4, 128, damping=0.05, block_size=128, act_order=ActOrder.GROUP_AWARE,
                            on_failure=CholeskyFailure.STEPWISE, damping_step=0.01, true_sequential=True),
    # optimum's GPTQQuantizer runs GPTQModel's GPTQ with its own defaults: damp_percent 0.1
    "optimum": WeightSpec(GPTQ, 4, 128, damping=0.1, block_size=128, act_order=ActOrder.GROUP_AWARE,
                          on_failure=CholeskyFailure.STEPWISE, damping_step=0.01, true_sequential=True),
    "gptq-reference": WeightSpec(GPTQ, 4, 128, damping=0.01, block_size=128, act_order=ActOrder.NONE,
                                 on_failure=CholeskyFailure.RAISE),
}
PRESETS: dict[str, QuantSpec] = {
    "W4 g128 GPTQ": QuantSpec(WeightSpec(GPTQ, 4, 128)),  # llm-compressor's numerics
    **{f"W4 g128 GPTQ ({tool})": QuantSpec(spec) for tool, spec in PEER_GPTQ.items()},
    "W4 g128 RTN": QuantSpec(WeightSpec(RTN, 4, 128)),
    # AWQ + W4A16 (symmetric, which llm-compressor's AWQ takes too: transformers with compressed-tensors
    # 0.20 cannot load asymmetric packed zero points, so only these checkpoints run on a CPU) on every
    # input found from the model; as llm-compressor maps Gemma 3 (no inputs under q_norm / k_norm); with
    # AutoAWQ's clip search; and W4A16_ASYM, the scheme llm-compressor's AWQ examples ship, for vLLM
    "W4 g128 AWQ": QuantSpec(WeightSpec(RTN, 4, 128), awq=AwqSpec()),
    "W4 g128 AWQ (llm-compressor)": QuantSpec(WeightSpec(RTN, 4, 128), awq=AwqSpec(renormalized=False)),
    "W4 g128 AWQ + clip": QuantSpec(WeightSpec(RTN, 4, 128), awq=AwqSpec(clip=True)),
    "W4 g128 AWQ asym (vLLM)": QuantSpec(WeightSpec(RTN, 4, 128, symmetric=False), awq=AwqSpec()),
    "W3 g128 GPTQ": QuantSpec(WeightSpec(GPTQ, 3, 128)),
    "W3 g128 RTN": QuantSpec(WeightSpec(RTN, 3, 128)),
    "W8A8 static (min/max)": QuantSpec(WeightSpec(RTN, 8, 0), ActivationSpec(8, RangeMethod.MINMAX)),
    "W8A8 static (p99.99)": QuantSpec(WeightSpec(RTN, 8, 0), ActivationSpec(8, RangeMethod.PERCENTILE, 99.99)),
    "W8A8 static (MSE)": QuantSpec(WeightSpec(RTN, 8, 0), ActivationSpec(8, RangeMethod.MSE)),
    "SmoothQuant + W8A8 static (min/max)": QuantSpec(WeightSpec(RTN, 8, 0), ActivationSpec(8, RangeMethod.MINMAX),
                                                     smoothing=0.5),  # llm-compressor's SmoothQuantModifier default
    "SmoothQuant + W8A8 dynamic": QuantSpec(WeightSpec(RTN, 8, 0), ActivationSpec(8, granularity=Granularity.TOKEN),
                                            smoothing=0.5),  # inputs as llm-compressor's "W8A8" scheme quantizes them
    "A8 static only (min/max)": QuantSpec(WeightSpec(WeightMethod.NONE), ActivationSpec(8, RangeMethod.MINMAX)),
    # the floating-point schemes of today's GPUs, as llm-compressor's presets of the same names define them
    "FP8 W8A8 static": QuantSpec(WeightSpec(RTN, group_size=-1, format=NumberFormat.FP8),  # "FP8"
                                 ActivationSpec(format=NumberFormat.FP8, range_method=RangeMethod.MINMAX)),
    "FP8 W8A8 dynamic": QuantSpec(WeightSpec(RTN, group_size=0, format=NumberFormat.FP8),  # "FP8_DYNAMIC"
                                  ActivationSpec(format=NumberFormat.FP8, granularity=Granularity.TOKEN)),
    "NVFP4 W4A4": QuantSpec(WeightSpec(RTN, format=NumberFormat.NVFP4), ActivationSpec(format=NumberFormat.NVFP4)),  # "NVFP4"
    "NVFP4A16": QuantSpec(WeightSpec(RTN, format=NumberFormat.NVFP4)),
    "MXFP4 W4A4": QuantSpec(WeightSpec(RTN, format=NumberFormat.MXFP4), ActivationSpec(format=NumberFormat.MXFP4)),  # "MXFP4"
    # four-bit integers both sides, the inputs per token at inference: the scheme rotations exist for
    "W4A4 int (A4 per token)": QuantSpec(WeightSpec(RTN, 4, 128), ActivationSpec(4, granularity=Granularity.TOKEN)),  # "W4A4"
}
