"""The one entry into quantization: a model, a ``Quantization`` (or a bare scheme) and the
``Calibrated`` results it runs on give the quantized weights and their per-layer table. The Quantize
tab, Compare, the CLI's runs, the Export tab's remake, the evaluation and the benches all come
through here, so what a method needs is checked once (``Quantization.check``), and a new method is
one more branch of the plan behind it, never another road."""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from engine.models import LoadedModel
from engine.progress import Progress, no_progress
from engine.quant.apply import QuantizedModel
from engine.quant.block_gptq import gptq_block_by_block
from engine.quant.plan import plan_quantization
from engine.quant.request import Calibrated, Quantization
from engine.quant.specs import QuantSpec

NOTHING_COLLECTED = Calibrated()


def quantize(loaded: LoadedModel, quantization: Quantization | QuantSpec, calibrated: Calibrated = NOTHING_COLLECTED,
             progress: Progress = no_progress,
             sink: Callable[[QuantizedModel], None] | None = None) -> tuple[QuantizedModel, pd.DataFrame]:
    """The quantized weights and input grids, and one row per quantized layer (see
    ``plan_quantization`` for the columns). ``sink`` (sequential runs only): each block's quantized
    layers are handed to it as soon as the block is done (``CheckpointWriter.add``) and not kept, so a
    model of any size is quantized in the memory of one block."""
    quantization = Quantization.of(quantization)
    quantization.check(calibrated, loaded.resident)
    if quantization.sequential:
        return gptq_block_by_block(loaded, calibrated.samples, quantization, sink, progress)
    if sink is not None:
        raise ValueError("A sink takes the blocks of a sequential quantization; this one quantizes every layer at once.")
    return plan_quantization(loaded, quantization.spec, calibrated, progress, quantization.output_errors)
