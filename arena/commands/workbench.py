"""The student's commands: ``arena plugin check`` and ``arena play``. Registered on the ``arena`` command by
:func:`register`.

* ``arena plugin check PATH`` plays a plugin against the built-ins in a scratch arena (``ARENA_HOME/checks``) that
  never reaches the class's database or board; the models this machine's arena trained already (a demo's defenses,
  their twins, the substitute) are copied in by key instead of trained again (:mod:`arena.commands.checks`).
* ``arena play PATH...`` plays plugin folders in one's own local arena: validated as a push is, then a new round of
  every plugin the arena holds (only the new matches run), published at once, so the board shows it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from sqlalchemy import select

from arena.commands import admin, checks, costs, report
from arena.config import Settings
from arena.contract import plugins
from arena.contract.plugins import PluginSource
from arena.execution import local, rounds
from arena.plan import planner
from arena.plan.versions import apply_validation, latest_valid_versions, record_plugins, store_version
from arena.play import validation
from arena.results import scoring
from arena.rules.tracks import Track
from arena.store import Database, PluginVersion, Round, RoundEntry, Team

#: job seconds under which a check or a play runs its jobs in this process, whose sandbox is warm already: a worker
#: process of its own per core imports torch and the arena and starts its own sandbox first, which cost a second check
#: after the demo more than playing its 14 matches side by side saved (18 s against 13.5 s on 2 cores; docs/plugins.md)
IN_PROCESS_SECONDS = 30.0


def register(main: click.Group, plugin_group: click.Group) -> None:
    """Add ``play`` to the ``arena`` command and ``check`` to its ``plugin`` group."""
    plugin_group.add_command(check)
    main.add_command(play)


def _open(settings: Settings) -> Database:
    db = Database(settings.database_url)
    db.upgrade()
    return db


# --------------------------------------------------------------------------------------------------
# arena plugin check
# --------------------------------------------------------------------------------------------------


@click.command("check")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--track", "track_name", default="digits", show_default=True)
@click.option("--full", is_flag=True, help="The track as defined, not as this machine's arena last played it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def check(path: Path, track_name: str, full: bool, quiet: bool) -> None:
    """Validate a plugin folder (with the smoke match a push gets) and play it against the built-in plugins.

    It plays in a scratch arena (ARENA_HOME/checks): nothing reaches the class's database or board. The models
    this machine's arena trained already are reused; what must still be trained is said, with an estimate, first.
    The track is played as the arena last played it (after `make demo`, its fewer images) unless --full.
    """
    home = Settings.from_env()
    track = admin.named_tracks(home, (track_name,))[0]
    settings = home.scratch()
    db = _open(settings)
    source = plugins.read_folder(path.resolve())
    lender, problem = checks.lender(home)
    if problem:
        click.echo(f"not reusing this machine's trained models: {problem}")
    if lender is not None and not full:
        track = _as_played(track, rounds.recorded_tracks(lender).get(track.name, track))
    try:
        hashes = [s.content_hash for s in plugins.discover(settings.plugin_dirs)]
        record_plugins(db, settings, checks.verdicts(lender, hashes))
        checks.borrow(lender, db, validation.kit_keys())
        version_id = _validate(db, settings, source, lender)
        with db.session() as session:
            version = session.get(PluginVersion, version_id)
            kind = version.plugin.kind
            found = set(hashes)  # the built-ins and ARENA_PLUGIN_DIRS, not the plugins checked before
            others = [v for v in latest_valid_versions(session) if v.plugin.kind != kind]
            others = [v for v in others if v.content_hash in found]
            defenses = [version] if kind == "defense" else others
            reused = checks.borrow(lender, db, checks.model_keys(settings, defenses, [track]))
            pairs = ([version], others) if kind == "attack" else (others, [version])
            planner.plan_matches(session, settings, *pairs, [track], seed=0)
            opponents = [v.id for v in others]
        if reused:
            click.echo(f"reused {reused} trained model(s) of this machine's arena ({_where(lender)})")
        cost = costs.cost(db, None, [lender])
        _say(report.cost_lines(cost))
        local.run_local(db, settings, {track.name: track}, None, not quiet, _workers(cost))
    except validation.BaselineError as exc:  # the arena's baseline is missing or broken: not the plugin's fault
        raise click.ClickException(str(exc)) from None
    finally:
        if lender is not None:
            lender.dispose()
    _print_matches(db, version_id, opponents, track)


def _as_played(defined: Track, played: Track) -> Track:
    """``played`` (the track as the arena last played it), saying how it differs from ``defined`` when it does."""
    was, now = defined.config(), played.config()
    changed = [f"{key} {now[key]} instead of {was[key]}" for key in sorted(was) if now.get(key) != was[key]]
    if changed:
        click.echo(f"plays {defined.name} as this arena last played it ({', '.join(changed)}; --full: as defined)")
    return played


def _validate(db: Database, settings: Settings, source: PluginSource, lender: Database | None = None) -> int:
    """Validate ``source`` as a push is (its smoke match included), saying first what the smoke match trains, unless
    ``db`` or ``lender`` validated the same code so before; record the verdict with its version and return the
    version's id; exit with status 1 when it is invalid."""
    cache = settings.home / "plugin-cache"
    loaded = checks.validated([db, lender], source.content_hash) if not source.errors else None
    if loaded is not None:
        click.echo(f"{source.label}: validated before, smoke match included (the same code)")
    else:
        loaded = validation.validate(source, cache)
    if not loaded.errors and loaded.smoke is None:
        missing = checks.kit_missing(db)
        first = [f"the smoke baseline's {', '.join(missing)} (one epoch each)"] if missing else []
        first += ["this defense (one epoch)"] if source.manifest and source.manifest.kind == "defense" else []
        click.echo(f"{source.label}: loads{'; its smoke match first trains ' if first else ''}{' and '.join(first)}")
        loaded = validation.validate(source, cache, validation.smoke_kit(db, settings))
    with db.session() as session:
        version, _ = store_version(session, source)
        apply_validation(version, loaded)
        version_id = version.id
    if loaded.errors:
        click.secho(f"{source.label}: INVALID", fg="red")
        for error in loaded.errors:
            click.echo(f"  {error}")
        sys.exit(1)
    click.secho(f"{source.label}: valid ({source.content_hash[:12]})", fg="green")
    click.echo(f"  smoke match, as a push gets it: {_smoke_line(loaded.smoke or {})}")
    return version_id


def _smoke_line(smoke: dict) -> str:
    metrics = smoke.get("metrics") or {}
    figures = ", ".join(
        f"{name} {100 * metrics[key]:.1f} %"
        for key, name in (("clean_accuracy", "clean"), ("robust_accuracy", "robust"), ("success_rate", "success"))
        if isinstance(metrics.get(key), int | float)
    )
    outcome = f"{smoke.get('status')} against {smoke.get('against')} ({smoke.get('threat')})"
    return f"{outcome}: {figures}" if figures else outcome


def _print_matches(db: Database, version_id: int, opponents: list[int], track: Track) -> None:
    """The version's matches on ``track``: an attack's success and norms, a defense's accuracy and rejections,
    and what the plugin printed."""
    matches = checks.matches_of(db, version_id, opponents, track.name)
    with db.session() as session:
        version = session.get(PluginVersion, version_id)
        kind, label = version.plugin.kind, f"{version.plugin.team.name}/{version.plugin.name}"
    click.echo(f"\n{label} on {track.name}: {len(matches)} match(es)")
    if kind == "attack":
        _say(report.attack_table(matches))
    else:
        _say(report.defense_table(matches, checks.training_logs(db, version_id)))
    projected = sum(int(m.metrics.get("violations") or 0) for m in matches if m.status == "ok" and kind == "attack")
    if projected:
        click.secho(
            f"warning: the referee had to project {projected} sample(s) back into the budget (violations): "
            "they count as judged, inside the budget, but the board flags the attack; stay inside it yourself",
            fg="yellow",
        )


# --------------------------------------------------------------------------------------------------
# arena play
# --------------------------------------------------------------------------------------------------


@click.command("play")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--track", "track_names", multiple=True, help="Track to play (repeatable) [digits].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--serve", is_flag=True, help="Then serve the board (as `arena serve` does).")
def play(paths: tuple[Path, ...], track_names: tuple[str, ...], quiet: bool, serve: bool) -> None:
    """Play plugin folders in your own local arena: validate each as a push is, play a new round of every plugin
    the arena holds on each track as the arena last played it (after `make demo`, its images: only your matches
    run), publish it and show where the board shows it.

    For a class's arena (teams with repositories) push to your team's repository instead.
    """
    settings = Settings.from_env()
    db = _open(settings)
    with db.session() as session:
        if session.scalar(select(Team.id).where(Team.repo_url.is_not(None)).limit(1)) is not None:
            raise click.ClickException(
                "this arena holds teams with repositories (a class's arena): push to your team's repository, "
                "or try a plugin with `arena plugin check PATH`, which never reaches the board"
            )
    recorded = rounds.recorded_tracks(db)  # as this arena played them (the demo's images): only new matches run
    tracks = [recorded.get(t.name, t) for t in admin.usable_tracks(settings, track_names or ("digits",))]
    for round_id, number in rounds.unfinished_rounds(db):  # a round an interrupted run left: finish it first
        click.echo(f"finishing round {number} first")
        local.run_local(db, settings, recorded, round_id, progress=not quiet)
    record_plugins(db, settings)
    scratch, _ = checks.lender(settings.scratch())  # a check may have trained the smoke kit or your defense
    try:
        checks.borrow(scratch, db, validation.kit_keys())
        versions = [_validate(db, settings, plugins.read_folder(path.resolve()), scratch) for path in paths]
        with db.session() as session:
            mine = [session.get(PluginVersion, version_id) for version_id in versions]
            defenses = [version for version in mine if version.plugin.kind == "defense"]
            checks.borrow(scratch, db, checks.model_keys(settings, defenses, tracks))
        round_id = planner.open_round(db, tracks, seed=0)
        plan = planner.plan_round(db, settings, round_id, {t.name: t for t in tracks})
        click.echo(f"round planned: {plan.cells_line()}")
        cost = costs.cost(db, round_id, [scratch])
        _say(report.cost_lines(cost))
        local.run_local(db, settings, {t.name: t for t in tracks}, round_id, not quiet, _workers(cost))
    except validation.BaselineError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if scratch is not None:
            scratch.dispose()
    planner.publish_round(db, round_id)
    _show_round(db, round_id, versions, tracks)
    if serve:
        from leaderboard.server import serve as run_server

        run_server("127.0.0.1", 5000, 2 * (os.cpu_count() or 1) + 1)


def _show_round(db: Database, round_id: int, versions: list[int], tracks: list[Track]) -> None:
    """The published round's rankings, each played version's matches, and where the board shows them."""
    with db.session() as session:
        number = session.get(Round, round_id).number
        _say(report.rankings(scoring.round_standings(session, round_id), number))
        entries = session.scalars(select(RoundEntry.plugin_version_id).where(RoundEntry.round_id == round_id)).all()
        pages = {v: session.get(PluginVersion, v).plugin_id for v in versions}
    for version_id in versions:
        for track in tracks:
            _print_matches(db, version_id, [e for e in entries if e != version_id], track)
    click.echo(f"\nround {number} is published: `arena serve` shows it on http://127.0.0.1:5000/?round={number}")
    for plugin_id in pages.values():
        click.echo(f"  your plugin's page: http://127.0.0.1:5000/plugins/{plugin_id}")
    click.echo("  its logs there are the instructor's, you in your own arena: `arena team token --admin`, then sign in")


def _workers(cost: costs.Cost) -> int | None:
    """One job at a time, in this process, for a run estimated under :data:`IN_PROCESS_SECONDS`; else the settings'
    (``ARENA_JOBS``, by default one per core)."""
    return 1 if cost.seconds is not None and cost.seconds < IN_PROCESS_SECONDS else None


def _say(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


def _where(db: Database | None) -> str:
    return db.engine.url.render_as_string(hide_password=True) if db is not None else "none"
