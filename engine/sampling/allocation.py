"""How many samples each length bucket gets, with shortfalls passed on so the total is exact."""
from __future__ import annotations

import numpy as np

from engine.sampling.specs import Allocation


def spread(amount: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Split ``amount`` over slots in proportion to ``weights`` (largest remainder), never above ``caps``.

    Returns integers summing to ``min(amount, caps.sum())``. Slots that hit their cap pass the
    rest on to the others, round after round; ties go to the slot with the larger weight, then the
    lower index, so the result is deterministic.
    """
    caps = np.asarray(caps, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    given = np.zeros_like(caps)
    remaining = int(min(amount, caps.sum()))
    while remaining > 0:
        open_slots = (caps - given) > 0
        slot_weights = np.where(open_slots, np.maximum(weights, 0), 0.0)
        if slot_weights.sum() == 0:  # open slots with zero weight still take an equal share
            slot_weights = open_slots.astype(np.float64)
        quota = remaining * slot_weights / slot_weights.sum()
        share = np.floor(quota).astype(np.int64)
        leftover = remaining - int(share.sum())
        order = np.lexsort((np.arange(len(caps)), -slot_weights, -(quota - share)))
        for slot in order[:leftover]:
            share[slot] += 1
        share = np.minimum(share, caps - given)
        given += share
        remaining -= int(share.sum())
    return given


def allocate(available: np.ndarray, nsamples: int, mode: Allocation) -> tuple[np.ndarray, np.ndarray]:
    """(asked, selected) per bucket.

    asked: the first allocation: ``equal`` gives every bucket nsamples // buckets (the remainder to
    the buckets holding most), ``proportional`` splits by what each bucket holds. selected: at most
    what each bucket holds; a bucket's shortfall goes to buckets with documents to spare (equally or
    proportionally, as asked), so selected sums to min(nsamples, available.sum()).
    """
    mode = Allocation(mode)
    available = np.asarray(available, dtype=np.int64)
    unlimited = np.full_like(available, nsamples)
    if mode is Allocation.EQUAL:
        # equal shares; the remainder goes to the fullest buckets (tiny weight breaks the tie)
        asked = spread(nsamples, np.ones(len(available)) + available * 1e-12, unlimited)
    else:
        asked = spread(nsamples, available, unlimited) if available.sum() else np.zeros_like(available)
    selected = np.minimum(asked, available)
    shortfall = int(min(nsamples, available.sum()) - selected.sum())
    if shortfall > 0:
        spare = available - selected
        # equal: the same share to every bucket with spare documents (ties to the fullest)
        weights = np.ones(len(available)) + spare * 1e-12 if mode is Allocation.EQUAL else spare.astype(np.float64)
        selected = selected + spread(shortfall, weights, spare)
    return asked, selected
