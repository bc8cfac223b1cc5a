"""The board's pages: the overview (both rankings per track and threat) and the matrix heatmap."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from leaderboard import boards

bp = Blueprint("board", __name__)


@bp.route("/")
def overview() -> str:
    """Defense and attack rankings of the latest round, or of ``?round=N``."""
    return render_template("board/overview.html", **boards.overview(request.args))


@bp.route("/matrix")
def matrix() -> str:
    """The attack-by-defense matrix of one track and threat, coloured by ``?metric=``."""
    return render_template("board/matrix.html", metrics=boards.METRICS, **boards.matrix(request.args))


@bp.app_template_filter("percent")
def percent(value: float | None) -> str:
    """``0.8731`` as ``87.3%``; a dash when there is no value."""
    return "–" if value is None else f"{100 * value:.1f}%"


@bp.app_template_filter("number")
def number(value: float | None) -> str:
    """A mean norm or query count with three significant digits; a dash when there is none."""
    return "–" if value is None else f"{value:.3g}"


@bp.app_template_filter("heat")
def heat(value: float | None, metric: str) -> str:
    """A cell's background: green where the defense holds, red where the attack wins, grey if empty."""
    if value is None:
        return "#e5e7eb"
    holds = value if metric == "robust_accuracy" else 1.0 - value
    return f"hsl({round(120 * holds)}, 70%, 78%)"
