"""The board's JSON API: the same data as each page, under ``/api/``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from werkzeug.exceptions import HTTPException

from leaderboard import boards

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.route("/leaderboard")
def leaderboard() -> dict[str, Any]:
    """The overview's data: round numbers, the chosen round and its boards (rankings and matrix)."""
    return boards.overview(request.args)


@bp.route("/matrix")
def matrix() -> dict[str, Any]:
    """The matrix page's data: attacks, defenses and cells of one track and threat."""
    return boards.matrix(request.args)


@bp.errorhandler(HTTPException)
def error(exc: HTTPException) -> tuple[dict[str, Any], int]:
    """Errors as JSON, never as an HTML page."""
    return {"error": exc.description, "status": exc.code}, exc.code or 500
