"""The board's JSON API: the same data as each page, under ``/api/``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from leaderboard import boards, caching, games, history, lessons, matches, plugin_page, round_jobs, rules, teams

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.route("/")
def index() -> dict[str, Any]:
    """What the API offers: its routes, by name."""
    routes = current_app.url_map.iter_rules()
    return {rule.endpoint.removeprefix("api."): rule.rule for rule in routes if rule.endpoint.startswith("api.")}


@bp.route("/leaderboard")
def leaderboard() -> Response:
    """The overview's data: round numbers, the chosen round, its progress and both rankings per board."""
    page = boards.overview(request.args)
    caching.cache_round(page.data, request.args)
    return caching.as_json(page)


@bp.route("/matrix")
def matrix() -> Response:
    """The matrix page's data: attacks, defenses and cells of one track and threat."""
    page = boards.matrix(request.args)
    caching.cache_round(page.data, request.args)
    return caching.as_json(page)


@bp.route("/rounds", endpoint="rounds")
def rounds_data() -> Response:
    """Every round's leaders and one board's history."""
    return caching.as_json(history.history(request.args))


@bp.route("/matches/<int:result_id>")
def match(result_id: int) -> dict[str, Any]:
    """One match, its metrics, outcomes, norms, log and gallery."""
    caching.cache(caching.MATCH)
    return matches.match(result_id)


@bp.route("/teams", endpoint="teams")
def teams_data() -> dict[str, Any]:
    """Every team and its plugins."""
    return teams.teams()


@bp.route("/status", endpoint="status")
def status_data() -> dict[str, Any]:
    """One line per team: last sync and push, versions valid, invalid and waiting, last failure."""
    return teams.status(request.args.get("sort") or "name")


@bp.route("/teams/<int:team_id>")
def team(team_id: int) -> dict[str, Any]:
    """One team's plugins."""
    return teams.team(team_id)


@bp.route("/plugins/<int:plugin_id>")
def plugin(plugin_id: int) -> dict[str, Any]:
    """One plugin's versions, validation errors and results."""
    return plugin_page.plugin(plugin_id)


@bp.route("/jobs", endpoint="jobs")
def jobs_data() -> dict[str, Any]:
    """Job counts and lists of a round."""
    return round_jobs.jobs(request.args)


@bp.route("/rules", endpoint="rules")
def rules_data() -> dict[str, Any]:
    """Tracks, threat models and scoring."""
    return rules.rules()


@bp.route("/game", endpoint="game")
def game_data() -> dict[str, Any]:
    """A board as a zero-sum game: value, equilibrium mixes, best responses, the value over rounds."""
    return games.game(request.args)


@bp.route("/lessons", endpoint="lessons")
def lessons_data() -> dict[str, Any]:
    """The course's claims beside the round's figures and the papers', each with its verdict."""
    return lessons.lessons_page(request.args)
