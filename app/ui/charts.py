"""Inline SVG charts drawn on the server: no chart script, nothing for the CSP to allow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sparkline:
    points: str  # an SVG polyline's `points`
    width: int
    height: int
    peak: float  # the largest y value, for the axis label
    span: float  # the largest x value


def sparkline(values: list[tuple[float, float]], width: int = 560,
              height: int = 120) -> Sparkline | None:
    """Scale (x, y) pairs into a width × height box, y growing upwards."""
    if len(values) < 2:
        return None
    span = max(x for x, _ in values) or 1.0
    peak = max(y for _, y in values) or 1.0
    pad = 4
    coords = (f"{pad + x / span * (width - 2 * pad):.1f},"
              f"{height - pad - y / peak * (height - 2 * pad):.1f}" for x, y in values)
    return Sparkline(" ".join(coords), width, height, peak, span)
