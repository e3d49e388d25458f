"""How a layer's input is quantized: static ranges from the streamed statistics (ranges.py), the
quantizer a layer's input gets at inference (inputs.py), what each range method sets for FP8 and
NVFP4 (format_ranges.py)."""
