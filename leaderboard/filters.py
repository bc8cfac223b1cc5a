"""Template filters: shares as percentages, numbers with three significant digits, heatmap colours, times."""

from __future__ import annotations

from datetime import datetime

from flask import Flask

#: metrics where a high value means the attack won (their heat is reversed)
ATTACK_METRICS = ("success_rate", "target_hit_rate")


def percent(value: object) -> str:
    """``0.8731`` as ``87.3%``; a dash when there is no number (``None``, a missing metric)."""
    return f"{100 * value:.1f}%" if _is_number(value) else "–"


def number(value: object) -> str:
    """A mean norm or query count with three significant digits; a dash when there is no number."""
    return f"{value:.3g}" if _is_number(value) else "–"


def heat(value: float | None, metric: str) -> str:
    """A cell's background: green where the defense holds, red where the attack wins, grey if empty."""
    if value is None:
        return "#e5e7eb"
    holds = 1.0 - value if metric in ATTACK_METRICS else value
    return f"hsl({round(120 * holds)}, 70%, 78%)"


def moment(iso: str | None) -> str:
    """An ISO 8601 time as ``2026-12-04 18:00`` (UTC); a dash when there is none."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M") if iso else "–"


def minutes(value: int | None) -> str:
    """A duration in minutes as ``2 d 3 h``, ``5 h 10 min`` or ``7 min``; a dash when there is none."""
    if value is None:
        return "–"
    days, rest = divmod(value, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {mins} min" if hours else f"{mins} min"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def init_app(app: Flask) -> None:
    """Register the filters."""
    app.add_template_filter(percent)
    app.add_template_filter(number)
    app.add_template_filter(heat)
    app.add_template_filter(moment)
    app.add_template_filter(minutes)
