"""Rounds end to end on a small digits track: planning, caching by content, broken plugins, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from arena.commands.cli import DEMO_IMAGES, main
from arena.config import Settings
from arena.execution import local
from arena.plan import planner, planning, versions
from arena.rules.tracks import load_tracks
from arena.store import Database, Job, Result, RoundMatch

REPO = Path(__file__).resolve().parents[1]
#: the built-in plugins these tests play against (all of them would make every round minutes long)
SKELETON_BUILTINS = "fgsm,simba,transfer,undefended,fgsm-adv-training"
TINY = """
[tracks.tiny]
base = "digits"
eval_size = 40
batch_size = 40
epochs = 3
max_queries = 20
time_limit = 120
"""

IGNORES_BUDGET = """
from arena import Attack, hookimpl

class Sloppy(Attack):
    threats = ("white-box",)

    def run(self, target, x, y, budget):
        return x + 0.5

@hookimpl
def arena_attacks():
    return [Sloppy]
"""

BROKEN_AT_IMPORT = """
from arena import Attack, hookimpl
class Broken(Attack)
    pass
"""

RAISES_IN_RUN = """
from arena import Attack, hookimpl

class Raises(Attack):
    def run(self, target, x, y, budget):
        raise RuntimeError("this attack always fails")

@hookimpl
def arena_attacks():
    return [Raises]
"""


def write_plugin(parent: Path, name: str, kind: str, code: str, team: str = "students") -> Path:
    folder = parent / f"{kind}s" / name
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(f'name = "{name}"\nkind = "{kind}"\nteam = "{team}"\nsummary = "test"\n')
    (folder / f"{name.replace('-', '_')}.py").write_text(code)
    return folder


@pytest.fixture
def student_dir(arena_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A students' plugin folder beside the built-ins, and the tiny track in the arena's home."""
    arena_home.mkdir(parents=True, exist_ok=True)
    (arena_home / "tracks.toml").write_text(TINY)
    folder = tmp_path / "student-plugins"
    (folder / "attacks").mkdir(parents=True)
    monkeypatch.setenv("ARENA_PLUGIN_DIRS", str(folder))
    monkeypatch.setenv("ARENA_BUILTINS", SKELETON_BUILTINS)
    return folder


def migrated(settings: Settings) -> Database:
    db = Database(settings.database_url)
    db.upgrade()
    return db


def play(settings: Settings) -> planning.Plan:
    db = migrated(settings)
    tracks = load_tracks(settings.home)
    versions.record_plugins(db, settings)
    round_id = planner.open_round(db, [tracks["tiny"]])
    plan = planner.plan_round(db, settings, round_id, tracks)
    local.run_local(db, settings, tracks, round_id, progress=False)
    return plan


@pytest.mark.slow
def test_results_are_cached_by_content(student_dir: Path) -> None:
    fgsm = shutil.copytree(REPO / "plugins" / "attacks" / "fgsm", student_dir / "attacks" / "fgsm")
    manifest = fgsm / "plugin.toml"
    manifest.write_text(manifest.read_text().replace('team = "arena"', 'team = "students"'))
    settings = Settings.from_env()

    first = play(settings)
    assert first.new_jobs["train-defense"] == 2 and first.new_jobs["train-twin"] == 2
    assert first.new_jobs["train-substitute"] == 1
    assert first.new_jobs["match"] == first.cells > 0

    again = play(settings)
    assert sum(again.new_jobs.values()) == 0
    assert again.cached == again.cells == first.cells

    # A new version of one attack: only its row (2 defenses x 2 threats) is played again.
    code = fgsm / "fgsm.py"
    code.write_text(code.read_text() + "\n# a harmless change\n")
    changed = play(settings)
    assert dict(changed.new_jobs) == {"match": 4}
    assert changed.cached == changed.cells - 4

    db = Database(settings.database_url)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.state != "done")) == 0
        ok = session.scalar(select(func.count()).select_from(Result).where(Result.status == "ok"))
        assert ok == first.cells + 4


@pytest.mark.slow
def test_a_broken_plugin_fails_alone(student_dir: Path) -> None:
    write_plugin(student_dir, "syntax-error", "attack", BROKEN_AT_IMPORT)
    write_plugin(student_dir, "always-raises", "attack", RAISES_IN_RUN)
    settings = Settings.from_env()
    report = {item.label: item for item in versions.record_plugins(migrated(settings), settings)}
    assert report["students/syntax-error"].status == "invalid"
    assert "SyntaxError" in report["students/syntax-error"].errors[0]

    play(settings)
    db = Database(settings.database_url)
    with db.session() as session:
        results = session.scalars(select(Result).join(RoundMatch, RoundMatch.result_key == Result.key)).all()
        by_attack: dict[str, list[Result]] = {}
        for result in results:
            by_attack.setdefault(result.attack_version.plugin.name, []).append(result)
    assert "syntax-error" not in by_attack
    failed = by_attack["always-raises"]
    assert failed and all(r.status == "failed" for r in failed)
    assert all("RuntimeError: this attack always fails" in r.error for r in failed)
    assert all("this attack always fails" in r.log_tail for r in failed)
    others = [r for name, rs in by_attack.items() if name != "always-raises" for r in rs]
    assert others and all(r.status == "ok" for r in others)


def test_plugin_new_writes_a_plugin_that_validates(tmp_path: Path, arena_home: Path) -> None:
    runner = CliRunner()
    for kind in ("attack", "defense"):
        out = runner.invoke(main, ["plugin", "new", kind, f"my-{kind}", "--dir", str(tmp_path)])
        assert out.exit_code == 0, out.output
    from arena.contract import plugins

    for kind in ("attack", "defense"):
        source = plugins.read_folder(tmp_path / f"my-{kind}")
        assert plugins.validate(source, arena_home / "cache") == []
    again = runner.invoke(main, ["plugin", "new", "attack", "my-attack", "--dir", str(tmp_path)])
    assert again.exit_code != 0 and "already exists" in str(again.exception)


@pytest.mark.slow
def test_plugin_check_plays_against_the_builtins(tmp_path: Path, student_dir: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["plugin", "new", "attack", "probe", "--dir", str(tmp_path)]).exit_code == 0
    out = runner.invoke(main, ["plugin", "check", str(tmp_path / "probe"), "--track", "tiny"])
    assert out.exit_code == 0, out.output
    assert "valid" in out.output and "smoke match, as a push gets it: ok against arena/undefended" in out.output
    assert "arena/undefended" in out.output and "arena/fgsm-adv-training" in out.output
    assert "projected" in out.output and "warning" not in out.output
    home = Settings.from_env().home
    assert not (home / "arena.db").exists(), "a check never writes into the class's database"
    with Database(f"sqlite:///{home / 'checks' / 'arena.db'}").session() as session:
        assert session.scalar(select(func.count()).select_from(Result)) > 0, "it played in the scratch arena"

    write_plugin(tmp_path / "sloppy", "sloppy", "attack", IGNORES_BUDGET)
    sloppy = runner.invoke(
        main, ["plugin", "check", str(tmp_path / "sloppy" / "attacks" / "sloppy"), "--track", "tiny"]
    )
    assert sloppy.exit_code == 0, sloppy.output
    assert "40/40" in sloppy.output and "warning: the referee had to project" in sloppy.output

    write_plugin(tmp_path / "broken", "bad", "attack", BROKEN_AT_IMPORT)
    bad = runner.invoke(main, ["plugin", "check", str(tmp_path / "broken" / "attacks" / "bad")])
    assert bad.exit_code == 1 and "INVALID" in bad.output and "SyntaxError" in bad.output


@pytest.mark.slow
def test_demo_runs_a_whole_round(tmp_path: Path) -> None:
    """`arena demo --no-serve`, as a user runs it, in a fresh home: exits 0 and prints the rankings; a student's
    `arena play` after it plays only the student's matches, on the demo's images."""
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "ARENA_HOME": str(tmp_path / "home"),
        "ARENA_BUILTINS": SKELETON_BUILTINS,
        "OMP_NUM_THREADS": "1",
    }

    def arena(*args: str) -> str:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "arena"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    out = arena("demo", "--no-serve")
    said = f"the demo attacks {DEMO_IMAGES} of the 300 evaluation images of digits and judges a randomized defense"
    assert said in out and "(`arena demo --images 300 --draws 5` as a class's round" in out
    assert "round 1 - digits - white-box" in out
    assert "mnist" not in out  # digits only, unless asked
    assert "arena/undefended" in out and "arena/simba" in out
    arena("plugin", "new", "attack", "mine", "--team", "students", "--dir", str(tmp_path))
    played = arena("play", str(tmp_path / "mine"), "--quiet")
    assert "to do: 0 training(s), 4 match(es)" in played, "the demo's models and matches serve the student's round"
    assert "round 2 is published" in played


def test_demo_names_a_track_it_cannot_play(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "no-data"))
    result = CliRunner().invoke(main, ["demo", "--no-serve", "--track", "mnist-linf"])
    assert result.exit_code == 1
    assert "skipping track mnist-linf" in result.output and "no track has its data available" in result.output


def test_builtins_can_be_chosen_by_name(tmp_path: Path) -> None:
    chosen = Settings.from_env({"ARENA_HOME": str(tmp_path), "ARENA_BUILTINS": "fgsm, undefended"})
    assert [p.name for p in chosen.plugin_dirs] == ["fgsm", "undefended"]
    assert Settings.from_env({"ARENA_HOME": str(tmp_path), "ARENA_BUILTINS": ""}).plugin_dirs == ()
    with pytest.raises(ValueError, match="unknown plugins \\['nope'\\]"):
        Settings.from_env({"ARENA_HOME": str(tmp_path), "ARENA_BUILTINS": "fgsm,nope"})
