"""What calibscope writes for other tools: calibration sets (``calibration``) and quantized
checkpoints (``checkpoint``: compressed-tensors and GPTQ), and what reads them back (``verify``)."""
from engine.export.calibration import (
    MANIFEST,
    ExportFormat,
    calibration_dataset,
    export_format,
    load_calibration_export,
    optimum_samples,
    save_calibration_set,
)
from engine.export.checkpoint import (
    CheckpointDtype,
    CheckpointFormat,
    CheckpointSummary,
    CheckpointWriter,
    checkpoint_dtype,
    checkpoint_format,
    save_quantized,
    stored_dtype,
)
from engine.export.checkpoint import refusal as checkpoint_refusal
from engine.export.experts import simulated_layers
from engine.export.size import estimated_checkpoint_bytes
from engine.export.verify import (
    changed_floats,
    dequantized_layers,
    input_quantizers,
    largest_weight_difference,
    reloaded_divergence,
    stored_kv_scales,
    stored_rotations,
)

__all__ = [
    "MANIFEST",
    "CheckpointDtype",
    "CheckpointFormat",
    "CheckpointSummary",
    "CheckpointWriter",
    "ExportFormat",
    "calibration_dataset",
    "changed_floats",
    "checkpoint_dtype",
    "checkpoint_format",
    "checkpoint_refusal",
    "dequantized_layers",
    "estimated_checkpoint_bytes",
    "export_format",
    "input_quantizers",
    "largest_weight_difference",
    "load_calibration_export",
    "optimum_samples",
    "reloaded_divergence",
    "save_calibration_set",
    "save_quantized",
    "simulated_layers",
    "stored_dtype",
    "stored_kv_scales",
    "stored_rotations",
]
