"""Which calibration sample, and which token in it, set a layer's (or a channel's) maximum."""
from __future__ import annotations

from dataclasses import dataclass

from engine.sampling import CalibrationSet
from engine.stats.report import StatsReport


@dataclass(frozen=True)
class Attribution:
    key: str
    channel: int
    value: float
    row: int
    position: int
    source: str
    before: str
    token: str
    after: str


def attribute(report: StatsReport, key: str, calibration: CalibrationSet, tokenizer, channel: int | None = None,
              context: int = 24) -> Attribution:
    """Where ``key``'s maximum |x| (or channel ``channel``'s) was set, with the text around that token."""
    arrays = report.arrays(key)
    channel = int(arrays["absmax"].argmax()) if channel is None else int(channel)
    row, position = int(arrays["absmax_row"][channel]), int(arrays["absmax_position"][channel])
    sequence = calibration.sequences[row]
    provenance = calibration.provenance[row]
    return Attribution(
        key=key, channel=channel, value=float(arrays["absmax"][channel]), row=row, position=position,
        source=f"{provenance.source} @ token {provenance.token_offset}",
        before=tokenizer.decode(sequence[max(0, position - context):position]),
        token=tokenizer.decode(sequence[position:position + 1]),
        after=tokenizer.decode(sequence[position + 1:position + 1 + context]),
    )
