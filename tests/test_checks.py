"""The student's loop (issue 25): `arena plugin check` reuses what this machine's arena trained and says what it will
cost first; a defense's check shows accuracy, rejections, the worst case and its own log; `arena play` puts one's
plugins in a published round of one's own arena, which the board shows at once."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from test_rounds import TINY, write_plugin
from test_scoring import Rows

from arena.commands import checks, costs, report
from arena.commands.cli import main
from arena.config import Settings
from arena.execution import local
from arena.plan import keys, planner, versions
from arena.rules.tracks import load_tracks
from arena.store import Artifact, Database, Job, Plugin, PluginVersion, Result, Round, Team
from leaderboard import create_app

REPO = Path(__file__).resolve().parents[1]
#: the arena a student has after a (small) demo: two attacks, two defenses
BUILTINS = "fgsm,transfer,undefended,fgsm-adv-training"
#: a slow defense and a quick one, as the cost's estimates see them
DEFENSES = (("defense-gan", "defense"), ("undefended", "defense"))

GUARD = """
import torch
from arena import Defense, hookimpl


class Guarded(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)

    def reject(self, x):
        return (x - x.round()).abs().flatten(1).mean(1) > 0.25


class Guard(Defense):
    def train(self, ctx):
        model = ctx.make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(ctx.epochs):
            for x, y in ctx.batches(128):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        ctx.log(f"guard trained {ctx.epochs} epochs on {len(ctx.x)} images")
        return Guarded(model).eval()


@hookimpl
def arena_defenses():
    return [Guard]
"""


def migrated(url: str) -> Database:
    db = Database(url)
    db.upgrade()
    return db


# --------------------------------------------------------------------------------------------------
# Borrowing, verdicts and the cost, on rows written by hand
# --------------------------------------------------------------------------------------------------


def test_a_check_shares_the_arenas_secret_but_not_its_database(tmp_path: Path) -> None:
    home = Settings.from_env({"ARENA_HOME": str(tmp_path / "home")})
    scratch = home.scratch()
    assert scratch.home == home.home / "checks" and scratch.database_url != home.database_url
    assert scratch.secret() == home.secret() and keys.secret_fingerprint(scratch) == keys.secret_fingerprint(home)
    assert (home.home / "secret").is_file() and not (scratch.home / "secret").exists()
    assert checks.lender(home) == (None, None), "no database yet: nothing to borrow from"
    assert not (home.home / "arena.db").exists(), "looking for a lender never creates the arena's database"


def test_borrowing_copies_missing_models_by_key_and_never_writes_the_lender(tmp_path: Path) -> None:
    lender, db = migrated(f"sqlite:///{tmp_path / 'arena.db'}"), migrated(f"sqlite:///{tmp_path / 'checks.db'}")
    theirs, ours = Rows(lender), Rows(db)
    ours.version("somebody", "other", "defense")  # ids differ between the two databases
    lent = theirs.version("arena", "undefended", "defense")
    mine = ours.version("arena", "undefended", "defense")
    with lender.session() as session:
        content_hash = session.get(PluginVersion, lent).content_hash
        for key, kind, version in (("k-defense", "defense", lent), ("k-sub", "substitute", None)):
            meta = {"seconds": 3.5}
            session.add(Artifact(key=key, kind=kind, plugin_version_id=version, track="tiny", data=b"w", meta=meta))
    with db.session() as session:
        assert session.get(PluginVersion, mine).content_hash == content_hash
        session.add(Artifact(key="k-sub", kind="substitute", track="tiny", data=b"ours", meta={}))
    assert checks.borrow(lender, db, ["k-defense", "k-sub", "k-unknown"]) == 1
    with db.session() as session:
        copied = session.scalar(select(Artifact).where(Artifact.key == "k-defense"))
        assert (copied.data, copied.meta, copied.plugin_version_id) == (b"w", {"seconds": 3.5}, mine)
        assert session.scalar(select(Artifact.data).where(Artifact.key == "k-sub")) == b"ours", "kept, not replaced"
    assert checks.borrow(lender, db, ["k-defense"]) == 0
    with lender.session() as session:
        assert session.scalar(select(func.count()).select_from(Artifact)) == 2
    assert checks.borrow(None, db, ["k-defense"]) == 0


def test_verdicts_lend_a_recorded_validation_by_content(tmp_path: Path) -> None:
    lender = migrated(f"sqlite:///{tmp_path / 'arena.db'}")
    rows = Rows(lender)
    valid, invalid = rows.version("arena", "fgsm", "attack"), rows.version("arena", "bad", "attack", valid=False)
    with lender.session() as session:
        good, bad = session.get(PluginVersion, valid), session.get(PluginVersion, invalid)
        good.checks = {"declared": {"norms": ["linf"], "threats": ["white-box"]}, "smoke": None}
        bad.errors, hashes = "line one\nline two", [good.content_hash, bad.content_hash, "unknown"]
    found = checks.verdicts(lender, hashes)
    assert set(found) == set(hashes[:2])
    assert found[hashes[0]].errors == [] and found[hashes[0]].declared["norms"] == ["linf"]
    assert found[hashes[1]].errors == ["line one", "line two"]


def test_the_cost_names_each_training_and_estimates_each_match_by_its_defense(tmp_path: Path) -> None:
    """Estimates from this machine's records: the plugin's last training, a slow defense's own matches."""
    db = migrated(f"sqlite:///{tmp_path / 'arena.db'}")
    rows = Rows(db)
    old, new = rows.version("students", "guard", "defense"), rows.version("students", "guard", "defense")
    fgsm, slow, quick = (rows.version("arena", name, kind) for name, kind in (("fgsm", "attack"),) + DEFENSES)
    jobs = [("train-defense", {"defense": new}), ("train-twin", {"defense": new}), ("train-substitute", {})]
    jobs += [("match", {"attack": fgsm, "defense": d, "threat": "white-box"}) for d in (slow, quick, slow)]
    with db.session() as session:
        meta = {"seconds": 12.0}
        session.add(Artifact(key="old", kind="defense", plugin_version_id=old, track="tiny", data=b"", meta=meta))
        for number, (kind, params) in enumerate(jobs):
            session.add(Job(kind=kind, key=f"job-{number}", params={"track": "tiny"} | params))
    for key, defense, seconds in (("a", slow, 9.0), ("b", slow, 11.0), ("c", quick, 0.25)):
        ids = {"attack_version_id": old, "defense_version_id": defense, "track": "tiny", "threat": "white-box"}
        with db.session() as session:
            session.get(Result, rows.result(key, [1, 0], **ids)).wall_time = seconds
    cost = costs.cost(db, None)
    assert [(t.kind, t.label, t.seconds) for t in cost.trainings] == [
        ("defense", "students/guard", 12.0),
        ("twin", "students/guard", None),  # no twin of guard was ever trained here
        ("substitute", "the arena's substitute", None),
    ]
    assert (cost.matches, cost.match_seconds, cost.seconds) == (3, 10.0 + 0.25 + 10.0, None)
    lines = report.cost_lines(cost)
    assert lines[0] == "to do: 3 training(s), 3 match(es); in all time unknown until it has run once"
    assert "  train the defense students/guard on tiny: about 12 s (its last training here)" in lines
    assert "  train the twin students/guard on tiny: time unknown" in lines
    assert lines[-1] == "  play 3 matches: about 20 s"


def test_a_second_check_estimates_its_matches_by_the_first_checks(tmp_path: Path) -> None:
    """A new version of a quick attack is estimated by its earlier version's matches against the same defense, not
    by the defense's matches against every attack (a slow one's among them); in the lender's database as well."""
    db, lender = (migrated(f"sqlite:///{tmp_path / name}.db") for name in ("checks", "arena"))
    rows, lent = Rows(db), Rows(lender)
    first, second = rows.version("students", "probe", "attack"), rows.version("students", "probe", "attack")
    slow = rows.version("arena", "defense-gan", "defense")
    other = lent.version("arena", "pgd", "attack")
    lent_first, lent_slow = lent.version("students", "probe", "attack"), lent.version("arena", "defense-gan", "defense")
    with db.session() as session:
        session.add(Job(kind="match", key="job", params={"track": "tiny", "attack": second, "defense": slow}))
    ids = {"track": "tiny", "threat": "white-box"}
    for where, key, attack, defense, seconds in (
        (lender, "a", other, lent_slow, 30.0),
        (lender, "b", other, lent_slow, 40.0),
        (lender, "c", lent_first, lent_slow, 3.0),
        (db, "d", first, slow, 2.0),
    ):
        written = Rows(where).result(key, [1, 0], attack_version_id=attack, defense_version_id=defense, **ids)
        with where.session() as session:
            session.get(Result, written).wall_time = seconds
    assert costs.cost(db, None, [lender]).match_seconds == 2.5  # its earlier versions here and in the lender
    with db.session() as session:
        session.query(Result).delete()
    assert costs.cost(db, None, [lender]).match_seconds == 3.0  # its earlier version in the lender
    with lender.session() as session:
        session.query(Result).filter(Result.attack_version_id == lent_first).delete()
    assert costs.cost(db, None, [lender]).match_seconds == 35.0  # none: the defense's matches


# --------------------------------------------------------------------------------------------------
# The real thing: a small arena, then checks and a play against its built-ins
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An arena after a small demo on the tiny digits track (its round published); its environment."""
    root = tmp_path_factory.mktemp("student-arena")
    env = {"ARENA_HOME": str(root / "home"), "ARENA_BUILTINS": BUILTINS, "ARENA_PLUGIN_DIRS": ""}
    settings = Settings.from_env(env)
    settings.home.mkdir()
    (settings.home / "tracks.toml").write_text(TINY)
    db = migrated(settings.database_url)
    tracks = load_tracks(settings.home)
    versions.record_plugins(db, settings)
    round_id = planner.open_round(db, [tracks["tiny"]])
    planner.plan_round(db, settings, round_id, tracks)
    local.run_local(db, settings, tracks, round_id, progress=False)
    planner.publish_round(db, round_id)
    db.dispose()
    yield env | {"ARENA_DATABASE_URL": "", "ARENA_BROKER_URL": ""}
    shutil.rmtree(root, ignore_errors=True)


def invoke(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def scaffold(env: dict[str, str], kind: str, name: str, parent: Path) -> Path:
    invoke(env, "plugin", "new", kind, name, "--team", "students", "--dir", str(parent))
    return parent / name


@pytest.mark.slow
def test_a_check_after_the_demo_trains_nothing_the_arena_trained(arena: dict[str, str], tmp_path: Path) -> None:
    home = Settings.from_env(arena).home
    main_db = Database(f"sqlite:///{home / 'arena.db'}")
    with main_db.session() as session:
        before = session.scalar(select(func.count()).select_from(Result))
    probe = scaffold(arena, "attack", "probe", tmp_path)
    out = invoke(arena, "plugin", "check", str(probe), "--track", "tiny", "--quiet")
    assert "students/probe: valid" in out and "smoke match, as a push gets it: ok against arena/undefended" in out
    assert re.search(r"reused \d+ trained model\(s\) of this machine's arena", out)
    assert "to do: 0 training(s), 4 match(es)" in out, "both defenses and their twins come from the arena"
    assert out.index("to do:") < out.index("students/probe on tiny: 4 match(es)")
    table = out[out.index("students/probe on tiny") :]
    for column in ("success", "L-inf", "L2", "queries", "projected"):
        assert column in table
    assert table.count("arena/undefended") == 2 and table.count("arena/fgsm-adv-training") == 2
    assert "mean success rate:" in table
    scratch = Database(f"sqlite:///{home / 'checks' / 'arena.db'}")
    with scratch.session() as session:
        assert not session.scalars(select(Job.kind).where(Job.kind != "match")).all(), "nothing trained again"
        assert session.scalar(select(func.count()).select_from(Result)) == 4
    with main_db.session() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == before, "results never leave the check"
        assert session.scalar(select(Plugin.id).where(Plugin.name == "probe")) is None
    again = invoke(arena, "plugin", "check", str(probe), "--track", "tiny", "--quiet")
    assert "nothing to train or play: every result is known already" in again
    assert "students/probe: validated before, smoke match included (the same code)" in again
    main_db.dispose()
    scratch.dispose()


@pytest.mark.slow
def test_a_check_plays_the_track_as_the_arena_last_played_it_unless_full(arena: dict[str, str], tmp_path: Path) -> None:
    """After a lighter round (the demo's fewer images) a check plays that round's images, and says so; ``--full``
    plays the track as defined. Both reuse the arena's models: training reads neither."""
    home = tmp_path / "home"
    shutil.copytree(Settings.from_env(arena).home, home, ignore=shutil.ignore_patterns("checks"))
    (home / "tracks.toml").write_text(TINY.replace("eval_size = 40", "eval_size = 60"))  # defined anew, not played
    env = arena | {"ARENA_HOME": str(home)}
    probe = scaffold(env, "attack", "probe", tmp_path)
    out = invoke(env, "plugin", "check", str(probe), "--track", "tiny", "--quiet")
    assert "plays tiny as this arena last played it (eval_size 40 instead of 60; --full: as defined)" in out
    assert "to do: 0 training(s), 4 match(es)" in out
    scratch = Database(f"sqlite:///{home / 'checks' / 'arena.db'}")
    full = invoke(env, "plugin", "check", str(probe), "--track", "tiny", "--full", "--quiet")
    assert "as this arena last played it" not in full and "to do: 0 training(s), 4 match(es)" in full
    with scratch.session() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 8, "the full track's matches are new"
        sizes = sorted(metrics["n"] for metrics in session.scalars(select(Result.metrics)))
    assert sizes == [40] * 4 + [60] * 4
    scratch.dispose()


@pytest.mark.slow
def test_a_defense_check_shows_accuracy_rejections_the_worst_case_and_its_log(
    arena: dict[str, str], tmp_path: Path
) -> None:
    guard = write_plugin(tmp_path, "guard", "defense", GUARD)
    out = invoke(arena, "plugin", "check", str(guard), "--track", "tiny", "--quiet")
    # the smoke kit's own models come first where no earlier check in this arena trained them
    first = r"students/guard: loads; its smoke match first trains (the smoke baseline.s .* and )?this defense"
    assert re.search(first, out), out
    assert "to do: 2 training(s), 3 match(es)" in out
    # the estimate's size varies by machine (under a second on a fast one): its basis is what is tested
    estimate = r"students/guard on tiny: (about \d+ (s|min)|under a second) \(its smoke epoch, scaled as"
    assert re.search(estimate, out), out
    table = out[out.index("students/guard on tiny: 3 match(es)") :]
    assert "rejected clean" in table and "rejected adv" in table
    rows = [line for line in table.splitlines() if line.startswith("arena/")]
    assert len(rows) == 3 and all(re.search(r"\d+/40 +\d+/40 +ok$", row) for row in rows), rows
    assert re.search(r"worst case \(.*\): black-box \d+\.\d %, gray-box \d+\.\d %, white-box \d+\.\d %", table)
    assert "what it printed while training (defense, tiny):" in table and "| guard trained 3 epochs" in table
    assert "what it printed while training (twin, tiny):" in table


@pytest.mark.slow
def test_play_publishes_a_round_the_board_shows_at_once(arena: dict[str, str], tmp_path: Path) -> None:
    probe = scaffold(arena, "attack", "player", tmp_path)
    out = invoke(arena, "play", str(probe), "--track", "tiny", "--quiet")
    assert "students/player: valid" in out and "to do: 0 training(s), 4 match(es)" in out
    assert "round 2 - tiny - white-box" in out and "students/player" in out
    assert "round 2 is published" in out
    page = re.search(r"your plugin's page: http://127.0.0.1:5000(/plugins/\d+)", out)
    assert page, out
    settings = Settings.from_env(arena)
    app = create_app({"DATABASE_URL": settings.database_url, "ARENA_HOME": str(settings.home), "STANDINGS_REFRESH": 0})
    client = app.test_client()  # anyone, signed in or not
    overview = client.get("/").get_data(as_text=True)
    assert "students" in overview and "player" in overview and "<strong>2</strong>" in overview
    plugin = client.get(page[1]).get_data(as_text=True)
    assert "smoke match" in plugin and "not played" not in plugin and "against <code>arena/undefended</code>" in plugin
    smoke = re.search(
        r"smoke match, as a push gets it: ok .*: clean ([\d.]+) %, robust ([\d.]+) %, success ([\d.]+) %", out
    )
    for name, figure in zip(("clean accuracy", "robust accuracy", "attack success"), smoke.groups(), strict=True):
        assert f"{name} {figure}%" in plugin, "the page says what the command printed"
    assert "withheld" not in plugin and plugin.count('href="/matches/') == 4, "its results are public"
    app.extensions["arena_db"].dispose()
    again = invoke(arena, "play", str(probe), "--track", "tiny", "--quiet")
    assert "nothing to train or play" in again and "round 3 is published" in again


def test_play_refuses_a_class_arena(arena_home: Path, tmp_path: Path) -> None:
    db = migrated(Settings.from_env().database_url)
    with db.session() as session:
        session.add(Team(name="red", repo_url="https://example.org/red.git"))
    folder = tmp_path / "mine"
    folder.mkdir()
    result = CliRunner().invoke(main, ["play", str(folder)])
    assert result.exit_code == 1 and "a class's arena" in result.output and "arena plugin check" in result.output
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Round)) == 0
    db.dispose()
