"""One rank of the data-parallel test: the tiny model's statistics, Hessians and a sweep over gloo."""
from __future__ import annotations

import torch

from engine.runner import distributed


def run_rank(rank: int, world: int, port: int, out: str) -> None:
    from engine import ModelSpec, load_model
    from engine.experiments import SweepSpec, sweep
    from engine.stats import HessianSpec, StatsSpec, collect
    from engine.stats.hessian_report import collect_hessians
    from tests.test_runner import calibration_for

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        loaded = load_model(ModelSpec("tiny-random-llama"))
        calibration = calibration_for(loaded)
        stats = collect(loaded, calibration, StatsSpec(batch_size=2))
        hessians = collect_hessians(loaded, calibration, HessianSpec(batch_size=2))
        blockwise = collect_hessians(loaded, calibration, HessianSpec(batch_size=2, execution="block-by-block"))
        swept = sweep(loaded, calibration, SweepSpec(shuffles=2, batch_size=2))  # bfloat16 bucket sums, reduced in float32
        if distributed.is_writer():
            torch.save({"channels": stats.channels, "hessians": hessians.hessians, "blockwise": blockwise.hessians,
                        "tokens": hessians.diagnostics["tokens"].tolist(), "sweep": swept.rows}, out)
    finally:
        torch.distributed.destroy_process_group()
