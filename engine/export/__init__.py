"""What calibscope writes for other tools: calibration sets (``calibration``) and quantized
checkpoints (``checkpoint``: compressed-tensors and GPTQ)."""
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
    CheckpointFormat,
    CheckpointSummary,
    CheckpointWriter,
    checkpoint_format,
    save_quantized,
)

__all__ = [
    "MANIFEST",
    "CheckpointFormat",
    "CheckpointSummary",
    "CheckpointWriter",
    "ExportFormat",
    "calibration_dataset",
    "checkpoint_format",
    "export_format",
    "load_calibration_export",
    "optimum_samples",
    "save_calibration_set",
    "save_quantized",
]
