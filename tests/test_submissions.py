"""Submissions through git, with real local repositories: push, sync, pin, validate, limit, withdraw.

Every test pushes to a bare repository of its own (a team of its own) in one arena home per module, so
the smoke match's baseline is trained once.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from arena.classroom import submissions
from arena.classroom.submissions import SubmissionError
from arena.commands.cli import main
from arena.config import Settings
from arena.contract import plugins
from arena.plan.versions import latest_valid_versions
from arena.play import validation
from arena.store import Database, Plugin, PluginVersion, Team

BUILTIN = Path(__file__).resolve().parents[1] / "plugins"
BROKEN = "from arena import Attack, hookimpl\nclass Broken(Attack)\n    pass\n"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Team",
    "GIT_AUTHOR_EMAIL": "team@example.org",
    "GIT_COMMITTER_NAME": "Team",
    "GIT_COMMITTER_EMAIL": "team@example.org",
}


class Remote:
    """A team's bare repository and a clone of it to commit and push from."""

    def __init__(self, root: Path, name: str) -> None:
        self.bare, self.work = root / f"{name}.git", root / f"{name}-work"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git("init", "--quiet", "--initial-branch=main", str(self.work))
        git("-C", str(self.work), "remote", "add", "origin", str(self.bare))

    def plugin(self, kind: str, builtin: str, name: str, team: str, under: str = "") -> Path:
        """Copy a built-in plugin into ``plugins/<kind>s/<name>`` as team ``team``'s."""
        folder = self.work / under / "plugins" / f"{kind}s" / name
        shutil.copytree(BUILTIN / f"{kind}s" / builtin, folder, ignore=shutil.ignore_patterns("__pycache__"))
        manifest = folder / "plugin.toml"
        text = manifest.read_text().replace(f'name = "{builtin}"', f'name = "{name}"')
        module = builtin.replace("-", "_")
        manifest.write_text(f'module = "{module}"\n' + text.replace('team = "arena"', f'team = "{team}"'))
        return folder

    def commit(self, message: str) -> str:
        """Commit everything; return the commit's id."""
        git("-C", str(self.work), "add", "--all")
        git("-C", str(self.work), "commit", "--quiet", "--allow-empty", "--message", message)
        return git("-C", str(self.work), "rev-parse", "HEAD").strip()

    def push(self) -> str:
        """Push main; return what the remote said (the hook's output)."""
        return git("-C", str(self.work), "push", "--quiet", "origin", "main", stderr=True)


def git(*args: str, stderr: bool = False) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=600)
    return done.stdout + (done.stderr if stderr else "")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One arena home for the module (the smoke baseline trains once), and a git identity."""
    root = tmp_path_factory.mktemp("submissions")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARENA_HOME", str(root / "home"))
        patch.delenv("ARENA_DATABASE_URL", raising=False)
        patch.delenv("ARENA_BROKER_URL", raising=False)
        patch.delenv("ARENA_PLUGIN_DIRS", raising=False)
        for key, value in GIT_IDENTITY.items():
            patch.setenv(key, value)
        yield root


@pytest.fixture
def db(home: Path) -> Database:
    database = Database(Settings.from_env().database_url)
    database.upgrade()
    return database


def remote_for(home: Path, db: Database, team: str, **options: object) -> Remote:
    remote = Remote(home / "remotes", team)
    submissions.add_team(db, team, str(remote.bare), **options)  # type: ignore[arg-type]
    return remote


def versions(db: Database, team: str) -> list[PluginVersion]:
    with db.session() as session:
        query = select(PluginVersion).join(Plugin).join(Team).where(Team.name == team).order_by(PluginVersion.id)
        return list(session.scalars(query))


def sync_team(db: Database, team: str) -> submissions.TeamSync:
    (report,) = submissions.sync_teams(db, Settings.from_env(), team)
    assert report.error is None, report.error
    return report


@pytest.mark.slow  # a fresh `arena sync` process behind the push: its zygote, its smoke match
def test_a_push_through_the_hook_pins_the_commit_and_validates_in_the_sandbox(home: Path, db: Database) -> None:
    remote = remote_for(home, db, "red")
    out = CliRunner().invoke(main, ["hook", "install", "--bare-repo", str(remote.bare), "--team", "red"])
    assert out.exit_code == 0, out.output
    folder = remote.plugin("attack", "fgsm", "sign-step", "red")
    commit = remote.commit("first attack")

    said = remote.push()

    assert "red/sign-step" in said and "new" in said  # the pusher sees the outcome
    (version,) = versions(db, "red")
    assert version.commit == commit and version.path == "plugins/attacks/sign-step"
    assert version.status == "valid" and version.valid and version.evaluated_at is not None
    assert version.content_hash == plugins.read_folder(folder).content_hash
    stored = plugins.PluginSource.from_archive(version.archive, version.source)
    assert stored.files == plugins.read_folder(folder).files  # every worker runs exactly the pushed code
    smoke = version.checks["smoke"]
    assert smoke["status"] == "ok" and smoke["threat"] == "white-box" and smoke["against"] == "arena/undefended"
    assert smoke["metrics"]["success_rate"] is not None
    with db.session() as session:
        assert session.scalar(select(Team.synced_commit).where(Team.name == "red")) == commit


def test_unchanged_folders_create_nothing_and_keep_their_first_commit(home: Path, db: Database) -> None:
    remote = remote_for(home, db, "orange")
    remote.plugin("attack", "fgsm", "steady", "orange")
    first = remote.commit("steady")
    remote.push()
    assert sync_team(db, "orange").folders[0].status == "new"

    (remote.work / "README.md").write_text("notes, not a plugin\n")
    second = remote.commit("docs only")
    remote.push()
    report = sync_team(db, "orange")

    assert report.commit == second
    assert [f.status for f in report.folders] == ["unchanged"]
    (version,) = versions(db, "orange")
    assert version.commit == first


def test_a_broken_push_is_rejected_and_the_previous_version_stays_in_the_round(home: Path, db: Database) -> None:
    remote = remote_for(home, db, "yellow")
    folder = remote.plugin("attack", "fgsm", "fragile", "yellow")
    remote.commit("works")
    remote.push()
    sync_team(db, "yellow")
    (folder / "fgsm.py").write_text(BROKEN)
    remote.commit("oops")
    remote.push()

    report = sync_team(db, "yellow")

    (line,) = report.folders
    assert line.status == "invalid" and "SyntaxError" in line.errors[0] and "fgsm.py:2" in line.errors[0]
    good, broken = versions(db, "yellow")
    assert good.valid and not broken.valid and broken.status == "invalid"
    with db.session() as session:
        current = [v.id for v in latest_valid_versions(session) if v.plugin.team.name == "yellow"]
    assert current == [good.id]
    listed = CliRunner().invoke(main, ["team", "list"]).output  # the instructor's view of the class
    assert f"synced {report.commit[:12]}" in listed and "versions: 1 valid, 1 invalid, 0 waiting" in listed
    assert "last failure: validation of fragile at" in listed and "SyntaxError" in listed


def test_a_plugin_that_fails_its_smoke_match_is_rejected_with_the_reason(home: Path, db: Database) -> None:
    remote = remote_for(home, db, "green")
    folder = remote.plugin("attack", "fgsm", "shrinker", "green")
    code = folder / "fgsm.py"
    code.write_text(code.read_text().replace("return ", "return x[:, :, :4] if True else ", 1))
    remote.commit("wrong shape")
    remote.push()

    (line,) = sync_team(db, "green").folders

    assert line.status == "invalid"
    assert "smoke match: against arena/undefended (white-box)" in line.errors[0]
    assert "the attack returned shape" in line.errors[0]


def test_the_repository_decides_the_team_and_the_folder_the_kind(home: Path, db: Database) -> None:
    remote = remote_for(home, db, "blue")
    remote.plugin("attack", "fgsm", "impostor", "red")  # claims another team
    misplaced = remote.plugin("defense", "undefended", "misplaced", "blue")
    shutil.move(misplaced, remote.work / "plugins" / "attacks" / "misplaced")
    remote.commit("two mistakes")
    remote.push()

    lines = {line.label: line for line in sync_team(db, "blue").folders}

    assert "team = 'red', but this repository belongs to team 'blue'" in lines["blue/impostor"].errors[0]
    assert "wrong kind" in lines["blue/misplaced"].errors[0]
    assert {line.status for line in lines.values()} == {"invalid"}
    with db.session() as session:  # nothing was recorded under the team it claimed
        assert session.scalar(select(Plugin).join(Team).where(Team.name == "red", Plugin.name == "impostor")) is None


def test_links_in_a_plugin_folder_are_refused(home: Path, db: Database) -> None:
    remote = remote_for(home, db, "indigo")
    folder = remote.plugin("attack", "fgsm", "linker", "indigo")
    (folder / "secret").symlink_to("/etc/passwd")
    remote.commit("a link")
    remote.push()

    (line,) = sync_team(db, "indigo").folders

    assert line.status == "invalid" and "links, submodules and odd file names are not allowed" in line.errors[0]
    assert "secret" in line.errors[0]


def test_a_removed_folder_withdraws_its_plugin_and_a_return_brings_it_back(home: Path, db: Database) -> None:
    remote = remote_for(home, db, "violet")
    folder = remote.plugin("attack", "fgsm", "fleeting", "violet")
    remote.commit("add")
    remote.push()
    sync_team(db, "violet")
    shutil.rmtree(folder)
    remote.commit("remove")
    remote.push()

    assert [(f.label, f.status) for f in sync_team(db, "violet").folders] == [("violet/fleeting", "withdrawn")]
    with db.session() as session:
        assert not [v for v in latest_valid_versions(session) if v.plugin.team.name == "violet"]

    git("-C", str(remote.work), "revert", "--no-edit", "HEAD")
    remote.push()
    assert [f.status for f in sync_team(db, "violet").folders] == ["unchanged"]
    with db.session() as session:
        assert [v.plugin.name for v in latest_valid_versions(session) if v.plugin.team.name == "violet"]


def test_the_daily_limit_defers_versions_and_the_arenas_own_failures_do_not_count(
    home: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = remote_for(home, db, "cyan", daily_limit=1)
    folder = remote.plugin("attack", "fgsm", "busy", "cyan")
    remote.commit("v1")
    remote.push()

    monkeypatch.setattr(validation, "BUILTIN_PLUGIN_DIRS", ())  # the arena lost its baseline: its own fault
    (line,) = sync_team(db, "cyan").folders
    assert line.status == "error" and "could not evaluate this version (not counted" in line.errors[0]
    monkeypatch.undo()

    (line,) = sync_team(db, "cyan").folders  # evaluated again, and counted now
    assert line.status == "new"

    code = folder / "fgsm.py"
    code.write_text(code.read_text() + "\n# v2\n")
    remote.commit("v2")
    remote.push()
    (line,) = sync_team(db, "cyan").folders
    assert line.status == "deferred" and "daily limit reached" in line.errors[0]
    v1, v2 = versions(db, "cyan")
    assert v1.valid and v2.status == "deferred" and v2.evaluated_at is None

    with db.session() as session:
        session.scalar(select(Team).where(Team.name == "cyan")).daily_limit = 2
    (line,) = sync_team(db, "cyan").folders  # a later sync evaluates the deferred version
    assert line.status == "new"


def test_the_one_repository_layout_gives_each_team_its_folder(home: Path, db: Database) -> None:
    remote = Remote(home / "remotes", "class")
    for team in ("lion", "tiger"):
        submissions.add_team(db, team, str(remote.bare), path=f"teams/{team}")
        remote.plugin("attack", "fgsm", f"{team}-step", team, under=f"teams/{team}")
    remote.plugin("attack", "fgsm", "stowaway", "tiger", under="teams/lion")  # in the wrong team's folder
    remote.commit("merged pull requests")
    remote.push()

    reports = {r.team: r for r in submissions.sync_teams(db, Settings.from_env()) if r.team in ("lion", "tiger")}

    lion = {f.label: f for f in reports["lion"].folders}
    assert lion["lion/lion-step"].status == "new"
    assert "belongs to team 'lion'" in lion["lion/stowaway"].errors[0]
    assert [(f.label, f.status) for f in reports["tiger"].folders] == [("tiger/tiger-step", "new")]
    assert versions(db, "tiger")[0].path == "teams/tiger/plugins/attacks/tiger-step"


def test_no_team_takes_the_built_ins_name(db: Database, tmp_path: Path) -> None:
    """The lessons and the baseline read team ``arena`` as the built-ins: a class team may not be called so."""
    with pytest.raises(SubmissionError, match="built-in plugins' own"):
        submissions.add_team(db, "arena", str(tmp_path / "repo.git"))


def test_an_unreachable_repository_fails_only_its_team(home: Path, db: Database, tmp_path: Path) -> None:
    submissions.add_team(db, "ghost", str(tmp_path / "missing.git"))
    remote = remote_for(home, db, "teal")
    remote.plugin("attack", "fgsm", "present", "teal")
    remote.commit("here")
    remote.push()

    out = CliRunner().invoke(main, ["sync"])

    assert out.exit_code == 1
    assert "team ghost: cannot fetch branch 'main' of" in out.output
    assert "teal/present" in out.output
    bad_branch = CliRunner().invoke(main, ["team", "add", "x", "--repo", "r", "--branch", "bad..name"])
    assert bad_branch.exit_code != 0 and "not a valid branch name" in bad_branch.output


def test_team_commands_and_hook_errors(home: Path, db: Database, tmp_path: Path) -> None:
    runner = CliRunner()
    added = runner.invoke(main, ["team", "add", "magenta", "--repo", "/srv/git/magenta.git", "--daily-limit", "3"])
    assert added.exit_code == 0 and "added team magenta" in added.output
    listed = runner.invoke(main, ["team", "list"])
    assert "magenta" in listed.output and "limit 3/day" in listed.output and "never synced" in listed.output
    assert "last push none; versions: 0 valid, 0 invalid, 0 waiting" in listed.output
    assert "/srv/git/magenta.git" in listed.output
    assert runner.invoke(main, ["team", "add", "bad name", "--repo", "r"]).exit_code != 0

    work = tmp_path / "not-bare"
    git("init", "--quiet", str(work))
    refused = runner.invoke(main, ["hook", "install", "--bare-repo", str(work), "--team", "magenta"])
    assert refused.exit_code != 0 and "not a bare repository" in refused.output
    bare = tmp_path / "foreign.git"
    git("init", "--quiet", "--bare", str(bare))
    (bare / "hooks" / "post-receive").write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(SubmissionError, match="exists and is not the arena's"):
        submissions.install_hook(bare, "magenta")
