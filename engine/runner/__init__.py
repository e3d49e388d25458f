"""How a calibration set flows through a model: the passes that feed accumulators."""
from engine.runner.router import BatchTokens, Factory, Router, batch_tokens
from engine.runner.whole_model import PassResult, calibration_pass, model_device

__all__ = ["BatchTokens", "Factory", "PassResult", "Router", "batch_tokens", "calibration_pass", "model_device"]
