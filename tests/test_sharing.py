"""Sessions sharing one cached model: a plan made while another session evaluates its own quantized
weights equals a plan made alone, remembered results are per object (never by a reusable id) and
bounded, and the model cache waits for a running pass before a new model takes the evicted one's
memory."""
import gc
import threading
import time

import datasets
import pytest
import torch

from engine import ModelSpec
from engine.memo import OwnerMemo
from engine.models import ModelCache
from engine.quant import PRESETS, Calibrated, Quantization, quantize, quantized
from engine.sampling import RandomSpec, build
from engine.stats.hessian_report import collect_hessians

HOLD_S = 1.0  # how long the other session keeps its quantized weights in the model


@pytest.fixture(scope="module")
def hessians(tiny_llama):
    texts = [f"Paragraph {i}. " + "the quick brown fox jumps over the lazy dog " * (3 + i % 5) for i in range(24)]
    data = datasets.Dataset.from_dict({"text": texts, "source": ["q"] * 24, "row_id": list(range(24))})
    return collect_hessians(tiny_llama, build(data, tiny_llama.tokenizer, RandomSpec(nsamples=16, length=128)))


@pytest.mark.parametrize("scheme", ["W4 g128 GPTQ", "W4 g128 RTN"])
def test_a_plan_made_while_another_session_evaluates_equals_a_plan_made_alone(tiny_llama, hessians, scheme):
    spec = PRESETS[scheme]
    alone, _ = quantize(tiny_llama, Quantization(spec, sensitivity="none"), Calibrated(hessians=hessians))
    other, _ = quantize(tiny_llama, Quantization(PRESETS["W3 g128 RTN"], sensitivity="none"))
    entered, planned = threading.Event(), threading.Event()

    def other_session():
        with quantized(tiny_llama, other):  # its 3-bit weights are in the shared model meanwhile
            entered.set()
            planned.wait(HOLD_S)

    thread = threading.Thread(target=other_session)
    thread.start()
    assert entered.wait(10)
    concurrent, _ = quantize(tiny_llama, Quantization(spec, sensitivity="none"), Calibrated(hessians=hessians))
    planned.set()
    thread.join()
    assert set(concurrent.weights) == set(alone.weights)
    assert all(torch.equal(concurrent.weights[name], alone.weights[name]) for name in alone.weights)


def test_a_plan_for_another_shape_is_refused_naming_the_layer_and_another_dtype_is_cast(tiny_llama):
    from engine.errors import CalibscopeError
    from engine.quant import QuantizedModel

    name = "model.layers.0.mlp.down_proj"
    module = dict(tiny_llama.model.named_modules())[name]
    with (pytest.raises(CalibscopeError, match=f"{name} has shape"),
          quantized(tiny_llama, QuantizedModel({name: torch.zeros(3, 3)}))):
        pass
    other_dtype = torch.float64 if module.weight.dtype != torch.float64 else torch.float32
    with quantized(tiny_llama, QuantizedModel({name: torch.zeros_like(module.weight, dtype=other_dtype)})):
        assert module.weight.dtype != other_dtype and not module.weight.any()
    assert module.weight.any()


def test_remembered_results_belong_to_their_owner_and_are_bounded():
    class Owner:
        pass

    memo: OwnerMemo[int] = OwnerMemo(keep=2)
    first, second = Owner(), Owner()
    for key in range(3):
        memo.put(first, key, key)
    assert memo.get(first, 0) is None and memo.get(first, 2) == 2 and memo.get(second, 2) is None
    assert memo.get_or_compute(second, "k", lambda: 7) == 7 and memo.get_or_compute(second, "k", lambda: 8) == 7
    del first
    gc.collect()
    assert len(memo) == 1  # the freed owner's entries went with it: a new object with its id finds nothing


def test_the_cache_waits_for_a_pass_on_an_evicted_model_before_loading_another():
    class Loaded:
        def __init__(self, spec):
            self.spec, self.lock = spec, threading.RLock()

    cache = ModelCache(capacity=1, loader=lambda spec, progress: Loaded(spec))
    first = cache.get(ModelSpec("a/b"))
    order, running = [], threading.Event()

    def long_pass():
        with first.lock:
            running.set()
            time.sleep(0.5)
            order.append("pass ended")

    thread = threading.Thread(target=long_pass)
    thread.start()
    assert running.wait(10)
    second = cache.get(ModelSpec("c/d"))
    order.append("second loaded")
    thread.join()
    assert order == ["pass ended", "second loaded"] and second.spec == ModelSpec("c/d") and len(cache) == 1


def test_the_layer_order_probe_waits_for_a_pass_holding_the_models_lock():
    """The probe runs a forward: while another session's pass holds the model (its hooks on it), the
    probe waits its turn instead of feeding the pass two tokens of its own."""
    from engine.models import find_linear_layers
    from engine.models.layers import model_lock
    from engine.models.tiny import build_tiny

    model, _ = build_tiny("tiny-random-llama")
    order, held = [], threading.Event()

    def pass_running():
        with model_lock(model):
            held.set()
            time.sleep(0.5)
            order.append("pass ended")

    thread = threading.Thread(target=pass_running)
    thread.start()
    assert held.wait(10)
    layers = find_linear_layers(model)  # a new model: its order is probed now
    order.append("probed")
    thread.join()
    assert order == ["pass ended", "probed"] and len(layers) > 0
