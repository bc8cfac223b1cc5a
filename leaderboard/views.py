"""The board's pages: each renders the same data as its JSON twin in :mod:`leaderboard.api`."""

from __future__ import annotations

from functools import partial

from flask import Blueprint, Response, abort, render_template, request

from arena.results import export
from leaderboard import boards, caching, games, history, lessons, matches, plugin_page, round_jobs, rules, teams
from leaderboard.lookup import database
from leaderboard.visibility import rounds, shows_results

bp = Blueprint("board", __name__)


@bp.route("/")
def overview() -> str:
    """Defense and attack rankings of the latest round, or of ``?round=N``."""
    page = boards.overview(request.args)
    caching.cache_round(page.data, request.args)
    return caching.html("board/overview.html", page)


@bp.route("/matrix")
def matrix() -> str:
    """The attack-by-defense heatmap of one track and threat, coloured by ``?metric=``."""
    page = boards.matrix(request.args)
    caching.cache_round(page.data, request.args)
    return caching.html("board/matrix.html", page)


@bp.route("/rounds", endpoint="history")
def history_page() -> str:
    """Every round's leaders, and one board's history: scores over rounds, who broke whom, survival."""
    return caching.html("rounds/history.html", history.history(request.args))


@bp.route("/game")
def game_page() -> str:
    """A board as a zero-sum game: its value, the equilibrium mixes, best responses, the value over rounds."""
    return render_template("game/game.html", **games.game(request.args))


@bp.route("/lessons")
def lessons_page() -> str:
    """The lecture replayed: each claim of the course beside the round's figure and the paper's."""
    return render_template("lessons/lessons.html", **lessons.lessons_page(request.args))


@bp.route("/matches/<int:result_id>")
def match(result_id: int) -> str:
    """One match: metrics, outcomes, norms, log tail on failure, and the gallery."""
    data = matches.match(result_id)
    caching.cache(caching.MATCH)
    return render_template("matches/match.html", match=data)


@bp.route("/matches/<int:result_id>/gallery/<int:item>/<kind>.png")
def gallery_image(result_id: int, item: int, kind: str) -> Response:
    """A gallery image: ``clean``, ``adversarial`` or ``perturbation`` (amplified)."""
    caching.cache(caching.IMMUTABLE)
    return Response(matches.image(result_id, item, kind), mimetype="image/png")


@bp.route("/teams")
def team_list() -> str:
    """Every team and its plugins."""
    return render_template("teams/teams.html", **teams.teams())


@bp.route("/status")
def class_status() -> str:
    """One line per team: last sync and push, versions valid, invalid and waiting, last failure."""
    sort = request.args.get("sort") or "name"
    return caching.public(("status-page", sort), lambda: render_template("teams/status.html", **teams.status(sort)))


@bp.route("/teams/<int:team_id>")
def team(team_id: int) -> str:
    """One team's plugins and their standing."""
    page = partial(render_template, "teams/team.html")
    return caching.public(("team-page", team_id), lambda: page(**teams.team(team_id)))


@bp.route("/plugins/<int:plugin_id>")
def plugin(plugin_id: int) -> str:
    """One plugin's standing, versions, validation errors and results."""
    page = partial(render_template, "teams/plugin.html")
    return caching.public(("plugin-page", plugin_id), lambda: page(**plugin_page.plugin(plugin_id)))


@bp.route("/jobs")
def job_list() -> str:
    """Job progress of the latest round, or of ``?round=N``; reloads itself while the round runs."""
    return render_template("jobs/jobs.html", **round_jobs.jobs(request.args))


@bp.route("/rules")
def rule_book() -> str:
    """Tracks, budgets, threat models and scoring."""
    return render_template("rules/rules.html", **rules.rules())


@bp.route("/export/<table>.csv")
def export_table(table: str) -> Response:
    """A round's table as CSV (``rankings``, ``matrix``, ``samples``), of one board with ``?track=&threat=``;
    an unpublished round's for the instructor only."""
    if table not in export.TABLES:
        abort(404, f"no table {table}: {', '.join(export.TABLES)}")
    with database().session() as session:
        _, chosen = rounds(session, request.args.get("round"))
        if chosen is None:
            abort(404, "no round yet")
        if not shows_results(chosen):
            abort(403, f"round {chosen.number} is not published yet: its tables are the instructor's until then")
        body = export.as_csv(export.rows(session, chosen, table, request.args.get("track"), request.args.get("threat")))
        name = f"round-{chosen.number}-{table}.csv"
    response = Response(body, mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
