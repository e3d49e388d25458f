"""Per-pass scratch buffers: reused within a pass on one thread, never shared across threads or
temporaries of another name, dropped when the pass ends; an accumulator fed inside a pass equals
one fed outside."""
import threading

import torch

from engine import scratch
from engine.hooks import TokenIndex
from engine.stats import ActivationAccumulator

CPU = torch.device("cpu")


def test_buffers_are_reused_within_a_pass_and_dropped_after():
    outside = scratch.take("a", (4, 4), torch.float32, CPU)
    assert outside.data_ptr() != scratch.take("a", (4, 4), torch.float32, CPU).data_ptr()  # no pass: fresh memory
    with scratch.pass_scratch():
        first = scratch.take("a", (4, 4), torch.float32, CPU)
        again = scratch.take("a", (2, 8), torch.float32, CPU)
        other = scratch.take("b", (4, 4), torch.float32, CPU)
        assert first.data_ptr() == again.data_ptr() != other.data_ptr()
        with scratch.pass_scratch():  # nested: the same buffers
            assert scratch.take("a", (4, 4), torch.float32, CPU).data_ptr() == first.data_ptr()
        assert scratch.take("a", (8, 8), torch.float32, CPU).shape == (8, 8)  # grows when asked for more
        seen = []
        thread = threading.Thread(target=lambda: seen.append(scratch.take("a", (4, 4), torch.float32, CPU).data_ptr()))
        thread.start()
        thread.join()
        assert seen[0] != first.data_ptr()  # another thread (another session) never gets this pass's buffers
    assert getattr(scratch._LOCAL, "buffers", None) is None


def test_an_accumulator_fed_inside_a_pass_equals_one_fed_outside():
    generator = torch.Generator().manual_seed(5)
    batches = [(torch.randn(300, 24, generator=generator) * (i + 1)).to(torch.bfloat16) for i in range(3)]
    inside, outside = ActivationAccumulator(24), ActivationAccumulator(24)
    with scratch.pass_scratch():
        for number, batch in enumerate(batches):
            inside.update(batch, TokenIndex(torch.full((300,), number), torch.arange(300)))
    for number, batch in enumerate(batches):
        outside.update(batch, TokenIndex(torch.full((300,), number), torch.arange(300)))
    quantiles = torch.tensor([0.5, 0.999], dtype=torch.float64)
    first, second = inside.result(quantiles), outside.result(quantiles)
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
