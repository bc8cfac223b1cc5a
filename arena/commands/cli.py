"""The ``arena`` command: set up, run rounds, check plugins, show results, serve the board."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from arena.classroom.submissions import SubmissionError
from arena.commands import admin, report, workbench
from arena.config import PROCESS_DEFAULTS, Settings, SettingsError
from arena.contract import extras, plugins, scaffold
from arena.execution import follow, local, rounds, workers
from arena.plan import planner, versions
from arena.results import course, export, scoring
from arena.rules.tracks import Track, TrackError
from arena.sandbox import SandboxError
from arena.store import Database, Round

#: the demo's default: the track that plays a whole round of every built-in plugin in minutes on a CPU
DEMO_TRACKS = ("digits",)
#: the evaluation images the demo attacks per track (a class's round attacks the track's own count, digits' 300):
#: every built-in played in minutes; trained models do not depend on it, so a later check or round reuses them
DEMO_IMAGES = 80
#: the draws over which the demo judges a randomized defense (a class's round: the track's own, 5)
DEMO_DRAWS = 3
#: how much lower than the board's the demo's jobs run (``nice``)
DEMO_NICENESS = 10


#: the local executor's ``--jobs`` option (``arena round run``, ``round resume``, ``demo``)
JOBS = click.option(
    "--jobs",
    type=click.IntRange(1),
    help="Jobs run side by side by the local executor [ARENA_JOBS, else one per core and 1.5 GiB of memory].",
)


def _with_jobs(settings: Settings, jobs: int | None) -> Settings:
    return dataclasses.replace(settings, jobs=jobs) if jobs else settings


def _open(settings: Settings) -> Database:
    db = Database(settings.database_url)
    db.upgrade()
    return db


class ArenaGroup(click.Group):
    """The command group: the arena's own errors (settings, tracks, sandbox, database) end in one readable
    line and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (SettingsError, TrackError, SandboxError, SubmissionError, planner.RoundError) as exc:
            raise click.ClickException(str(exc)) from None
        except OperationalError as exc:
            raise click.ClickException(f"the database does not answer: {exc.orig}") from None


@click.group(cls=ArenaGroup)
@click.version_option(package_name="arena")
def main() -> None:
    """Arena: a tournament of adversarial attacks against defenses."""
    for key, value in PROCESS_DEFAULTS.items():  # for the processes this command starts (workers, sandboxes)
        os.environ.setdefault(key, value)
    try:  # a built-in that cannot load is said at once, with its fix, never left silently out of the rounds
        dirs = Settings.from_env().plugin_dirs
    except SettingsError:
        return  # the command itself says what is wrong
    for line in extras.unloadable(dirs):
        click.secho(line, fg="yellow", err=True)


@main.command()
def init() -> None:
    """Create the arena's home, database and secret, and record the plugins found."""
    settings = Settings.from_env()
    db = _open(settings)
    settings.secret()
    click.echo(f"arena home: {settings.home}\ndatabase:   {db.url}")
    _print_sync(versions.record_plugins(db, settings))


# --------------------------------------------------------------------------------------------------
# Plugins
# --------------------------------------------------------------------------------------------------


@main.group("plugins")
def plugins_group() -> None:
    """Discovered plugins."""


@plugins_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_list(as_json: bool) -> None:
    """Discover plugins (folders and entry points), record new versions, and list them."""
    settings = Settings.from_env()
    report = versions.record_plugins(_open(settings), settings)
    if as_json:
        click.echo(json.dumps([vars(r) for r in report], indent=2))
    else:
        _print_sync(report)


@main.group("plugin")
def plugin_group() -> None:
    """Write and check one plugin."""


@plugin_group.command("new")
@click.argument("kind", type=click.Choice(["attack", "defense"]))
@click.argument("name")
@click.option("--team", default="my-team", show_default=True)
@click.option("--dir", "parent", type=click.Path(path_type=Path), help="Parent folder [plugins/<kind>s].")
def plugin_new(kind: str, name: str, team: str, parent: Path | None) -> None:
    """Scaffold a working plugin folder."""
    if not plugins.NAME_PATTERN.match(name):
        raise click.UsageError("NAME: use lowercase letters, digits and '-'")
    folder = scaffold.create(kind, name, team, parent or Path("plugins") / f"{kind}s")
    click.echo(f"created {folder}; try: arena plugin check {folder}")


# --------------------------------------------------------------------------------------------------
# Rounds and results
# --------------------------------------------------------------------------------------------------


@main.group("round")
def round_group() -> None:
    """Rounds of the repeated game."""


@round_group.command("run")
@click.option("--track", "track_names", multiple=True, help="Track to play (repeatable) [all available].")
@click.option("--seed", default=0, show_default=True, help="The round's public seed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--wait", is_flag=True, help="With ARENA_BROKER_URL: follow the round until the workers finish it.")
@click.option("--retry-failed", is_flag=True, help=admin.RETRY_FAILED_HELP)
@JOBS
def round_run(
    track_names: tuple[str, ...], seed: int, quiet: bool, wait: bool, retry_failed: bool, jobs: int | None
) -> None:
    """Freeze the latest valid plugins, plan the round's jobs, run them (on Celery workers with ARENA_BROKER_URL)."""
    settings = _with_jobs(Settings.from_env(), jobs)
    db = _open(settings)
    tracks = admin.usable_tracks(settings, track_names)
    _play_round(db, settings, tracks, seed, quiet, wait, retry_failed)


def _play_round(
    db: Database,
    settings: Settings,
    tracks: list[Track],
    seed: int,
    quiet: bool,
    wait: bool = True,
    retry_failed: bool = False,
    teams: set[str] | None = None,
    planned: Callable[[int], None] | None = None,
) -> int:
    if not settings.broker_url:  # distributed rounds are kept moving by the workers' leases and the scheduler
        for unfinished, _ in rounds.unfinished_rounds(db):
            _resume(db, settings, unfinished, quiet)
    _print_sync(versions.record_plugins(db, settings))
    round_id = planner.open_round(db, tracks, seed)
    plan = planner.plan_round(db, settings, round_id, {t.name: t for t in tracks}, retry_failed, teams)
    new = ", ".join(f"{n} {kind}" for kind, n in sorted(plan.new_jobs.items())) or "none"
    click.echo(f"round planned: {plan.cells_line()}; new jobs: {new}")
    for line in plan.summary():
        click.echo(f"  {line}")
    if planned is not None:
        planned(round_id)
    started = time.perf_counter()
    if settings.broker_url:
        states = follow.run_celery(db, settings, {t.name: t for t in tracks}, round_id, wait, progress=not quiet)
        if not wait:
            click.echo(f"sent to the workers; jobs: {dict(states)}. `arena results` ranks the round once it is done")
            return round_id
    else:
        states = local.run_local(db, settings, {t.name: t for t in tracks}, round_id, progress=not quiet)
    took = time.perf_counter() - started
    click.echo(f"jobs: {dict(states) or 'none'} in {took:.1f} s")
    _print_results(db, round_id)
    return round_id


@round_group.command("resume")
@click.argument("number", type=int, required=False)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@JOBS
def round_resume(number: int | None, quiet: bool, jobs: int | None) -> None:
    """Finish an interrupted round [every unfinished one]: its jobs left running by a killed process are run again.

    `arena round run` does it too, before it plans a new round. With ARENA_BROKER_URL, follow the round
    until the workers finish it.
    """
    settings = _with_jobs(Settings.from_env(), jobs)
    db = _open(settings)
    unfinished = rounds.unfinished_rounds(db)
    chosen = [round_id for round_id, n in unfinished if number is None or n == number]
    if not chosen:
        click.echo(f"round {number} has nothing left to run" if number is not None else "no round is unfinished")
        return
    for round_id in chosen:
        _resume(db, settings, round_id, quiet)


def _resume(db: Database, settings: Settings, round_id: int, quiet: bool) -> None:
    """Run what is left of a round planned before, then print its rankings."""
    tracks = rounds.recorded_tracks(db)
    with db.session() as session:
        number = session.get(Round, round_id).number
    click.echo(f"resuming round {number}")
    started = time.perf_counter()
    if settings.broker_url:
        states = follow.run_celery(db, settings, tracks, round_id, wait=True, progress=not quiet)
    else:
        try:
            states = local.run_local(db, settings, tracks, round_id, progress=not quiet)
        except local.RoundBusy:
            click.echo(f"round {number} is being run by another process of this arena: left to it")
            return
    click.echo(f"round {number}: jobs {dict(states) or 'none'} in {time.perf_counter() - started:.1f} s")
    _print_results(db, round_id)


@main.command()
@click.option("--round", "number", type=int, help="Round number [latest].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def results(number: int | None, as_json: bool) -> None:
    """Rankings of a round, per track and threat."""
    settings = Settings.from_env()
    db = _open(settings)
    with db.session() as session:
        if number is None:
            round_ = scoring.latest_round(session)
        else:
            round_ = session.scalar(select(Round).where(Round.number == number))
        if round_ is None:
            raise click.ClickException("no round yet: run `arena round run`" if number is None else "no such round")
        round_id = round_.id
    if as_json:
        with db.session() as session:
            boards = [b.as_dict() for b in scoring.round_standings(session, round_id)]
        click.echo(json.dumps(boards, indent=2, default=str))
    else:
        _print_results(db, round_id)


@main.command("export")
@click.option("--round", "number", type=int, help="Round number [latest].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON files instead of CSV.")
def export_round(number: int | None, out: Path, as_json: bool) -> None:
    """Write a round's rankings, matrices and per-sample results (round-N-TABLE.csv) into a folder."""
    db = _open(Settings.from_env())
    out.mkdir(parents=True, exist_ok=True)
    with db.session() as session:
        query = select(Round).order_by(Round.number.desc())
        round_ = session.scalars(query if number is None else query.where(Round.number == number)).first()
        if round_ is None:
            raise click.ClickException("no round yet" if number is None else f"no round {number}")
        for table in export.TABLES:
            rows = export.rows(session, round_, table)
            path = out / f"round-{round_.number}-{table}.{'json' if as_json else 'csv'}"
            path.write_text(json.dumps(rows, indent=1) if as_json else export.as_csv(rows), encoding="utf-8")
            click.echo(f"{path}: {len(rows)} rows")


def _print_results(db: Database, round_id: int) -> None:
    with db.session() as session:
        number = session.get(Round, round_id).number
        for line in report.rankings(scoring.round_standings(session, round_id), number):
            click.secho(line, bold=line.startswith("round "))


def _print_sync(synced: list[versions.SyncedPlugin]) -> None:
    for item in synced:
        color = {"invalid": "red", "new": "green"}.get(item.status)
        click.secho(f"  {item.kind:<8} {item.label:<36} {item.content_hash[:12]}  {item.status}", fg=color)
        for error in item.errors:
            click.echo(f"      {error}")


# --------------------------------------------------------------------------------------------------
# Demo and board
# --------------------------------------------------------------------------------------------------


@main.command()
@click.option("--no-serve", is_flag=True, help="Run the round and print the rankings, then exit.")
@click.option("--track", "track_names", multiple=True, help="Track to play (repeatable) [default: digits].")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True)
@click.option(
    "--images",
    type=click.IntRange(1),
    default=DEMO_IMAGES,
    show_default=True,
    help="Evaluation images attacked per track (at most the track's own: digits 300).",
)
@click.option(
    "--draws",
    type=click.IntRange(1),
    default=DEMO_DRAWS,
    show_default=True,
    help="Draws over which a randomized defense is judged (at most the track's own: 5).",
)
@JOBS
def demo(
    no_serve: bool, track_names: tuple[str, ...], host: str, port: int, images: int, draws: int, jobs: int | None
) -> None:
    """A whole round of the built-in plugins (on digits unless --track says otherwise) on the first ``--images``
    of each track's secret evaluation images, randomized defenses judged over ``--draws`` draws, shown on the
    board as it plays (published from the start: the demo is the instructor), published again once done."""
    settings = _with_jobs(Settings.from_env(), jobs)
    db = _open(settings)
    usable = admin.usable_tracks(settings, track_names or DEMO_TRACKS)
    tracks = [_lighter(track, images, draws) for track in usable]
    board = None if no_serve else _start_board(host, port)
    os.nice(DEMO_NICENESS)  # the round's jobs (and their sandboxes) yield the cores to the board

    def show(round_id: int) -> None:
        planner.publish_round(db, round_id, while_running=True)
        if board is not None:
            click.secho(f"the board shows the round as it plays: http://{host}:{port}/ (its jobs: /jobs)", bold=True)

    round_id = _play_round(db, settings, tracks, seed=0, quiet=False, planned=show)
    try:  # the demo is the instructor: its round is public on the board
        planner.publish_round(db, round_id)
        click.echo("round published: the board shows its scores to everyone")
    except planner.RoundError as error:
        click.echo(f"round not published: {error}")
    if board is not None:
        click.echo(f"the board stays on http://{host}:{port}/ (Ctrl+C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            board.join()


def _lighter(track: Track, images: int, draws: int) -> Track:
    """``track`` attacking its first ``images`` evaluation images (a subset of its own) and judging a randomized
    defense over ``draws`` draws, at most the track's own, saying so. Training reads neither: the models are the
    track's (:meth:`Track.training_config`)."""
    images, draws = min(images, track.eval_size), min(draws, track.draws)
    if (images, draws) == (track.eval_size, track.draws):
        return track
    click.echo(
        f"the demo attacks {images} of the {track.eval_size} evaluation images of {track.name} and judges a "
        f"randomized defense over {draws} of its {track.draws} draws "
        f"(`arena demo --images {track.eval_size} --draws {track.draws}` as a class's round; the same trained models)"
    )
    return dataclasses.replace(track, eval_size=images, draws=draws)


def _start_board(host: str, port: int) -> multiprocessing.process.BaseProcess:
    """Serve the board in a process of its own (at this process's priority), before the round starts."""
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(host, port, None, False), name="arena-board", daemon=True
    )  # daemonic: it ends with the demo, however the demo ends (gunicorn forks its workers itself)
    process.start()
    return process


@main.command("course")
@click.option("--track", "track_name", default="digits", show_default=True, help="The track whose lessons to replay.")
@click.option("--round", "number", type=int, help="Read this round instead of playing the built-ins.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="The report [ARENA_HOME/course-TRACK.md].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def course_report(track_name: str, number: int | None, out: Path | None, quiet: bool) -> None:
    """The lecture replayed: each claim of the course beside the arena's figure and the paper's.

    Without --round, plays a round of the built-in plugins alone on the track and its printed-and-photographed
    sibling (trained defenses and earlier results are reused, so a second run only reads them), unpublished:
    the instructor sees it on the board's Lessons page, `arena round publish N` shows it to the class.
    """
    settings = Settings.from_env()
    db = _open(settings)
    if number is None:
        names = (track_name, course.PHYSICAL[track_name]) if track_name in course.PHYSICAL else (track_name,)
        round_id = _play_round(db, settings, admin.usable_tracks(settings, names), 0, quiet, teams={course.TEAM})
    with db.session() as session:
        wanted = Round.id == round_id if number is None else Round.number == number
        round_ = session.scalars(select(Round).where(wanted)).first()
        if round_ is None:
            raise click.ClickException(f"no round {number}: `arena round list` shows the rounds")
        if track_name not in round_.tracks:
            played = ", ".join(round_.tracks)
            raise click.ClickException(f"round {round_.number} did not play {track_name} (it played {played})")
        judged = course.lessons(scoring.round_standings(session, round_.id), track_name)
        number = round_.number
    path = out or settings.home / f"course-{track_name}.md"
    path.write_text(course.markdown(judged, track_name, number))
    for lesson in judged:
        click.echo(f"  {lesson.verdict:<15} {lesson.title}")
    click.echo(f"report: {path}; on the board: /lessons?round={number}&track={track_name}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True)
@click.option("--workers", type=click.IntRange(1), help="Server processes [2 per core, plus 1].")
def serve(host: str, port: int, workers: int | None) -> None:
    """Serve the leaderboard (gunicorn: several processes sharing one app and one sign-in key)."""
    _serve(host, port, workers)


def _serve(host: str, port: int, workers: int | None = None, access_log: bool = True) -> None:
    from leaderboard.server import serve as run_server

    count = workers or 2 * (os.cpu_count() or 1) + 1
    click.echo(f"leaderboard on http://{host}:{port} ({count} server processes; Ctrl+C to stop)")
    run_server(host, port, count, access_log=access_log)


main.add_command(workers.worker)
main.add_command(workers.scheduler)
admin.register(main, round_group)
workbench.register(main, plugin_group)
