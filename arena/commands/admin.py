"""The instructor's commands: teams and their repositories, syncing pushes, git hooks, and rounds.

``arena team add|list|token`` (``import`` and ``secret``: :mod:`arena.commands.enrolment`), ``arena sync``,
``arena hook install``, and ``arena round open|close|publish|list``
(beside ``arena round run``, which opens, closes and plays a round at once). Registered on the
``arena`` command by :func:`register`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from sqlalchemy import func, select

from arena import config
from arena.classroom import roster, submissions
from arena.classroom.submissions import TeamSync
from arena.commands import enrolment
from arena.config import Settings
from arena.execution import follow, local
from arena.plan import planner, versions
from arena.results import access
from arena.results.redaction import redact
from arena.rules.tracks import Track, load_tracks
from arena.store import Database, Round, RoundEntry, RoundMatch, Team

RELATIVE_TIME = re.compile(r"^\+(\d+)([mhd])$")
#: ``--retry-failed`` of ``arena round close`` and ``arena round run``
RETRY_FAILED_HELP = (
    "Replay the round's failed matches (and the trainings they need) as new attempts; "
    "earlier rounds keep showing their failures."
)


def register(main: click.Group, round_group: click.Group) -> None:
    """Add these commands to the ``arena`` command and to its ``round`` group."""
    for command in (team, sync, hook):
        main.add_command(command)
    for command in (enrolment.import_command, enrolment.secret_command):
        team.add_command(command)
    for command in (round_open, round_close, round_publish, round_list):
        round_group.add_command(command)


def _open(settings: Settings) -> Database:
    db = Database(settings.database_url)
    db.upgrade()
    return db


# --------------------------------------------------------------------------------------------------
# Teams, syncing, hooks
# --------------------------------------------------------------------------------------------------


@click.group()
def team() -> None:
    """Teams and their git repositories."""


@team.command("add")
@click.argument("name")
@click.option("--repo", required=True, help="URL or path git fetches the team's repository from.")
@click.option("--branch", default="main", show_default=True, help="The branch the arena plays.")
@click.option("--path", "folder", help="The team's folder in a shared class repository.")
@click.option(
    "--daily-limit",
    type=click.IntRange(min=0),
    help=f"Versions evaluated per 24 hours [ARENA_DAILY_LIMIT, else {config.DAILY_LIMIT}].",
)
def team_add(name: str, repo: str, branch: str, folder: str | None, daily_limit: int | None) -> None:
    """Register team NAME and the repository it pushes its plugins to (again: update it)."""
    settings = Settings.from_env()
    db = _open(settings)
    new = submissions.add_team(db, name, repo, branch, folder, daily_limit)
    where = f"{redact(repo)} ({branch}{', ' + folder if folder else ''})"
    click.echo(f"{'added' if new else 'updated'} team {name}: {where}; `arena sync --team {name}` fetches it")
    if new:
        _print_token(db, name)
        with db.session() as session:
            secret = enrolment.issue_secret(session, session.scalar(select(Team.id).where(Team.name == name)))
        enrolment.print_credentials(name, None, secret)


@team.command("token")
@click.argument("name", required=False)
@click.option("--admin", is_flag=True, help="The instructor's token (sees every team's logs) instead of a team's.")
def team_token(name: str | None, admin: bool) -> None:
    """A new board token for team NAME (or the instructor's, with --admin); the previous one stops working."""
    if admin == (name is not None):
        raise click.UsageError("give a team's NAME or --admin")
    _print_token(_open(Settings.from_env()), name)


def _print_token(db: Database, name: str | None) -> None:
    """Make and print a new token of team ``name`` (None: the instructor)."""
    with db.session() as session:
        team_id = None
        if name is not None:
            team_id = session.scalar(select(Team.id).where(Team.name == name))
            if team_id is None:
                raise click.ClickException(f"no team {name!r}: `arena team add {name} --repo URL` first")
        token = access.issue(session, team_id)
    who = f"team {name}" if name is not None else "the instructor"
    sees = "its plugins' logs and tracebacks" if name is not None else "every team's logs and tracebacks"
    click.echo(f"board token of {who} (shown once; `arena team token` makes a new one): {token}")
    click.echo(f"  sign in on the board's /signin page with it to see {sees}")


@team.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def team_list(as_json: bool) -> None:
    """Every team: repository, daily limit, last sync, last push, versions valid, invalid and waiting, its
    defenses' disputed matches and its last failure (see arena/classroom/roster.py)."""
    db = _open(Settings.from_env())
    with db.session() as session:
        limits = {t.name: submissions.daily_limit(t) for t in session.scalars(select(Team))}
        rows = [line.as_dict() | {"daily_limit": limits[line.name]} for line in roster.class_status(session)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no teams yet: `arena team add NAME --repo URL`")
    for row in rows:
        synced = (
            f"synced {str(row['synced_commit'])[:12]} at {row['synced_at']}" if row["synced_at"] else "never synced"
        )
        folder = f" ({row['path']})" if row["path"] else ""
        where = f"{row['repo']}{folder} [{row['branch']}]" if row["repo"] else "no repository"
        click.echo(f"{row['name']:<20} {where}  limit {row['daily_limit']}/day  {synced}")
        versions = f"{row['valid']} valid, {row['invalid']} invalid, {row['waiting']} waiting"
        disputed = f"; {row['disputed']} disputed match(es) of its defenses" if row["disputed"] else ""
        click.echo(f"{'':<20} last push {row['last_push'] or 'none'}; versions: {versions}{disputed}")
        failure = row["last_failure"]
        if failure:
            what = f"{failure['kind']} of {failure['plugin']} at {failure['at']}"
            click.echo(f"{'':<20} last failure: {what}: {failure['reason']}")


@click.command()
@click.option("--team", "team_name", help="Only this team [every team with a repository].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sync(team_name: str | None, as_json: bool) -> None:
    """Fetch the teams' repositories, record new plugin versions, and validate them (smoke match included).

    Exits with status 1 when a repository could not be fetched or read.
    """
    settings = Settings.from_env()
    reports = submissions.sync_teams(_open(settings), settings, team_name)
    if as_json:
        click.echo(json.dumps([_as_dict(r) for r in reports], indent=2))
    else:
        for report in reports:
            _print_team_sync(report)
    if any(r.error for r in reports):
        sys.exit(1)


def _as_dict(report: TeamSync) -> dict[str, object]:
    return {
        "team": report.team,
        "commit": report.commit,
        "error": report.error,
        "folders": [vars(f) for f in report.folders],
    }


def _print_team_sync(report: TeamSync) -> None:
    if report.error:
        click.secho(f"team {report.team}: {report.error}", fg="red")
        return
    click.secho(f"team {report.team} at {report.commit[:12] if report.commit else '?'}", bold=True)
    if not report.folders:
        click.echo("  no plugin folders (plugins/attacks/NAME, plugins/defenses/NAME)")
    colors = {"new": "green", "invalid": "red", "error": "yellow", "deferred": "yellow", "withdrawn": "yellow"}
    for folder in report.folders:
        line = f"  {folder.kind:<8} {folder.label:<36} {folder.content_hash[:12]:<12}  {folder.status}"
        click.secho(line, fg=colors.get(folder.status))
        for error in folder.errors:
            click.echo(f"      {error}")


@click.group()
def hook() -> None:
    """Git hooks: a push to a team's repository syncs it."""


@hook.command("install")
@click.option(
    "--bare-repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="The bare repository the team pushes to.",
)
@click.option("--team", "team_name", help="The team to sync on a push [every team: a shared class repository].")
@click.option("--background", is_flag=True, help="Return from the push at once; the sync logs to ARENA_HOME/logs.")
def hook_install(bare_repo: Path, team_name: str | None, background: bool) -> None:
    """Install a post-receive hook in BARE_REPO that runs `arena sync` (with this arena's settings)."""
    path = submissions.install_hook(bare_repo, team_name, background)
    click.echo(f"installed {path}: a push syncs {('team ' + team_name) if team_name else 'every team'}")


# --------------------------------------------------------------------------------------------------
# Rounds
# --------------------------------------------------------------------------------------------------


@click.command("open")
@click.option("--track", "track_names", multiple=True, help="Track to play (repeatable) [all available].")
@click.option("--seed", default=0, show_default=True, help="The round's public seed.")
@click.option("--closes-at", help="When `arena round close --due` closes it: ISO time (UTC unless given), or +2h, +3d.")
def round_open(track_names: tuple[str, ...], seed: int, closes_at: str | None) -> None:
    """Open a round: pushes are validated meanwhile, and closing it freezes the latest valid versions."""
    settings = Settings.from_env()
    db = _open(settings)
    tracks = usable_tracks(settings, track_names)
    round_id = planner.open_round(db, tracks, seed, _when(closes_at) if closes_at else None)
    with db.session() as session:
        round_ = session.get(Round, round_id)
        when = f"; closes {round_.closes_at:%Y-%m-%d %H:%M} UTC" if round_.closes_at else ""
        click.echo(f"round {round_.number} open on {', '.join(round_.tracks)} (seed {seed}){when}")


@click.command("close")
@click.option("--due", is_flag=True, help="Only when its scheduled closing time has come (for cron).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--wait", is_flag=True, help="With ARENA_BROKER_URL: follow the round until the workers finish it.")
@click.option("--retry-failed", is_flag=True, help=RETRY_FAILED_HELP)
def round_close(due: bool, quiet: bool, wait: bool, retry_failed: bool) -> None:
    """Close the open round: freeze the latest valid version of every plugin, plan only the jobs whose
    results are not cached yet (saying why each is new), and run them."""
    settings = Settings.from_env()
    db = _open(settings)
    with db.session() as session:
        current = planner.current_round(session)
        if current is None:
            raise click.ClickException("no round is open: `arena round open`")
        if due and (current.closes_at is None or current.closes_at > datetime.now(UTC)):
            click.echo(f"round {current.number} is not due yet")
            return
        round_id, number, names = current.id, current.number, list(current.tracks)
    tracks = {name: track for name, track in load_tracks(settings.home).items() if name in names}
    folders = versions.record_plugins(db, settings)  # the plugins of folders (the built-ins); teams sync on push
    fresh = sum(item.status == "new" for item in folders)
    click.echo(f"plugin folders: {len(folders)} plugins, {fresh} new version{'s' if fresh != 1 else ''}")
    plan = planner.plan_round(db, settings, round_id, tracks, retry_failed)
    with db.session() as session:
        frozen = session.scalar(select(func.count()).select_from(RoundEntry).where(RoundEntry.round_id == round_id))
    new = sum(plan.new_jobs.values())
    click.echo(
        f"round {number} closed: {frozen} plugin versions frozen; {plan.cells_line()}; "
        f"{new} new job{'s' if new != 1 else ''}" + (":" if new else "")
    )
    for line in plan.summary():
        click.echo(f"  {line}")
    started = time.perf_counter()
    if settings.broker_url:
        states = follow.run_celery(db, settings, tracks, round_id, wait, progress=not quiet)
    else:
        states = local.run_local(db, settings, tracks, round_id, progress=not quiet)
    click.echo(f"jobs: {dict(states) or 'none'} in {time.perf_counter() - started:.1f} s")
    click.echo(f"rankings: `arena results --round {number}`; publish: `arena round publish {number}`")


@click.command("publish")
@click.argument("number", type=int, required=False)
def round_publish(number: int | None) -> None:
    """Publish round NUMBER [the latest finished round]: the board shows it as final."""
    db = _open(Settings.from_env())
    with db.session() as session:
        query = select(Round).order_by(Round.number.desc())
        query = query.where(Round.number == number) if number is not None else query.where(Round.status == "done")
        round_ = session.scalars(query.limit(1)).first()
        if round_ is None:
            raise click.ClickException(f"no round {number}" if number is not None else "no finished round yet")
        round_id, number = round_.id, round_.number
    planner.publish_round(db, round_id)
    click.echo(f"round {number} published")


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def round_list(as_json: bool) -> None:
    """Every round: status, tracks, versions frozen, matches, schedule, publication."""
    db = _open(Settings.from_env())
    with db.session() as session:
        count = func.count()
        entries = {
            rid: n for rid, n in session.execute(select(RoundEntry.round_id, count).group_by(RoundEntry.round_id))
        }
        matches = {
            rid: n for rid, n in session.execute(select(RoundMatch.round_id, count).group_by(RoundMatch.round_id))
        }
        rows = [
            {
                "number": r.number,
                "status": r.status,
                "published": r.published,
                "tracks": r.tracks,
                "seed": r.seed,
                "versions": entries.get(r.id, 0),
                "matches": matches.get(r.id, 0),
                "opened_at": r.created_at.isoformat(),
                "closes_at": r.closes_at.isoformat() if r.closes_at else None,
                "closed_at": r.started_at.isoformat() if r.started_at else None,
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            }
            for r in session.scalars(select(Round).order_by(Round.number))
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no rounds yet: `arena round open`")
        return
    click.echo(f"{'round':>5}  {'status':<8} {'published':<9} {'versions':>8} {'matches':>7}  tracks, schedule")
    for row in rows:
        when = (
            f"closes {row['closes_at'][:16]}"
            if row["status"] == "open" and row["closes_at"]
            else f"closed {str(row['closed_at'])[:16]}"
            if row["closed_at"]
            else ""
        )
        click.echo(
            f"{row['number']:>5}  {row['status']:<8} {'yes' if row['published'] else 'no':<9} "
            f"{row['versions']:>8} {row['matches']:>7}  {', '.join(row['tracks'])}  {when}"
        )


def named_tracks(settings: Settings, names: tuple[str, ...]) -> list[Track]:
    """The tracks called ``names`` (none: every track), built in or from ``tracks.toml``; a usage error names
    the unknown ones."""
    known = load_tracks(settings.home)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.UsageError(f"unknown track(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names] if names else list(known.values())


def usable_tracks(settings: Settings, names: tuple[str, ...]) -> list[Track]:
    """The named tracks (none: all) whose data is available here, saying which are skipped and why."""
    usable = []
    for track in named_tracks(settings, names):
        reason = track.available(settings.data_dir)
        if reason:
            click.echo(f"skipping track {track.name}: {reason}", err=True)
        else:
            usable.append(track)
    if not usable:
        raise click.ClickException("no track has its data available")
    return usable


def _when(text: str) -> datetime:
    """A closing time: ``+30m``, ``+2h``, ``+3d`` from now, or an ISO 8601 time (UTC unless it says)."""
    relative = RELATIVE_TIME.fullmatch(text.strip())
    if relative:
        amount, unit = int(relative[1]), relative[2]
        return datetime.now(UTC) + timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give an ISO time such as 2026-12-01T18:00 or +2h", param_hint="--closes-at"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
