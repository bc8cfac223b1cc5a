"""Team submissions through git: fetch each team's repository, pin the commit, record and evaluate versions.

An instructor registers each team's repository and branch (``arena team add``), optionally a folder of
a shared class repository. :func:`sync_teams` fetches the repository into a bare mirror under
``ARENA_HOME/repos``, pins the branch's commit and reads every plugin folder (``plugins/attacks/*``,
``plugins/defenses/*``) at that commit straight from git's objects, so the arena runs exactly what was
pushed, byte for byte. A folder whose content the arena knows creates nothing; a new one becomes a plugin
version (commit, content hash, and the folder's archive in the database) and is then evaluated: loaded
and played in a smoke match in the sandbox (:mod:`arena.play.validation`), within the team's daily limit.

* A version that fails validation is rejected with readable reasons; the team's previous valid version
  stays in the game (rounds freeze the latest *valid* version of every plugin).
* Past its daily limit a version is *deferred*: recorded, not evaluated, and evaluated by a later sync.
* A version the arena failed to evaluate (its own fault: a sandbox that would not start) does not count
  against the limit: it is marked ``error`` and evaluated again by the next sync.
* A folder that disappears from the repository withdraws its plugin from the following rounds.

Over 400 lines: a sync's steps (fetch, pin, limit, record) read in the order they run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arena import config
from arena.config import Settings, SettingsError
from arena.contract import plugins
from arena.contract.plugins import MAX_PLUGIN_BYTES, PluginSource
from arena.plan import versions
from arena.play import validation
from arena.results.redaction import redact
from arena.sandbox import SandboxError
from arena.store import WAITING, Database, Plugin, PluginVersion, Team

PLUGIN_ROOTS = {"plugins/attacks": "attack", "plugins/defenses": "defense"}
GIT_TIMEOUT = 300.0
TEAM_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
HOOK_MARKER = "# installed by `arena hook install`"
#: file modes of git tree entries that a plugin folder may not hold
LINK_MODE, SUBMODULE_MODE = "120000", "160000"


class SubmissionError(Exception):
    """A team or its repository is unknown, unreachable or unreadable; the message says which."""


@dataclass
class FolderReport:
    """What a sync found in one plugin folder."""

    path: str
    label: str
    kind: str
    content_hash: str
    status: str  # new (valid) | unchanged | invalid | deferred | error | withdrawn
    errors: list[str] = field(default_factory=list)


@dataclass
class TeamSync:
    """What a sync did for one team: the pinned commit and each folder's outcome, or why it failed."""

    team: str
    commit: str | None = None
    folders: list[FolderReport] = field(default_factory=list)
    error: str | None = None


# --------------------------------------------------------------------------------------------------
# Teams
# --------------------------------------------------------------------------------------------------


def add_team(
    db: Database, name: str, repo: str, branch: str = "main", path: str | None = None, daily_limit: int | None = None
) -> bool:
    """Register team ``name``'s repository (and its folder in a shared one); return whether it is new."""
    path = check_team(name, repo, branch, path, daily_limit)
    with db.session() as session:
        team = session.scalar(select(Team).where(Team.name == name))
        new = team is None
        team = team or Team(name=name)
        team.repo_url, team.branch, team.path, team.daily_limit = repo, branch, path, daily_limit
        session.add(team)
    return new


def check_team(
    name: str, repo: str, branch: str = "main", path: str | None = None, daily_limit: int | None = None
) -> str | None:
    """Refuse a team's name, repository, branch, folder or limit that cannot be; return the folder normalised."""
    if not TEAM_PATTERN.fullmatch(name):
        raise SubmissionError(f"team name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    if name == plugins.BUILTIN_TEAM:
        raise SubmissionError(f"team name {name!r} is the built-in plugins' own: the board and the lessons trust it")
    if not repo.strip():
        raise SubmissionError("the repository URL is empty")
    try:
        _git("check-ref-format", "--branch", branch)
    except SubmissionError:
        raise SubmissionError(f"{branch!r} is not a valid branch name") from None
    if path is not None:
        path = _folder(path)
    if daily_limit is not None and daily_limit < 0:
        raise SubmissionError("the daily limit must not be negative")
    return path


def daily_limit(team: Team) -> int:
    """How many versions of ``team`` may be evaluated per 24 hours (its own limit, else ``ARENA_DAILY_LIMIT``)."""
    if team.daily_limit is not None:
        return team.daily_limit
    try:
        return config.daily_limit()
    except SettingsError as exc:
        raise SubmissionError(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# Syncing
# --------------------------------------------------------------------------------------------------


def sync_teams(db: Database, settings: Settings, team: str | None = None) -> list[TeamSync]:
    """Fetch every team's repository (or ``team``'s), record new versions and evaluate them.

    A team whose repository cannot be fetched or read gets an error in its report; the others go on.
    """
    with db.session() as session:
        query = select(Team.name).where(Team.repo_url.is_not(None)).order_by(Team.name)
        names = list(session.scalars(query if team is None else query.where(Team.name == team)))
    if team is not None and not names:
        raise SubmissionError(f"no team {team!r} with a repository; add it with `arena team add`")
    kit = _lazy(lambda: validation.smoke_kit(db, settings))
    reports = []
    for name in names:
        try:
            reports.append(sync_team(db, settings, name, kit))
        except SubmissionError as exc:
            reports.append(TeamSync(name, error=str(exc)))
    return reports


def sync_team(
    db: Database, settings: Settings, name: str, kit: Callable[[], validation.SmokeKit] | None = None
) -> TeamSync:
    """Fetch team ``name``'s branch, record a version per changed plugin folder, evaluate new versions."""
    with db.session() as session:
        team = session.scalar(select(Team).where(Team.name == name))
        if team is None or team.repo_url is None:
            raise SubmissionError(f"no team {name!r} with a repository")
        repo, branch, folder = team.repo_url, team.branch, team.path
    mirror = settings.home / "repos" / f"{hashlib.sha256(repo.encode()).hexdigest()[:16]}.git"
    with _locked(mirror.with_suffix(".lock")):
        commit = fetch(mirror, repo, branch)
        found = read_folders(mirror, commit, folder)
        report = TeamSync(name, commit)
        todo = _record(db, name, repo, commit, found, report)
        for index, version_id in todo:
            status = evaluate(db, settings, version_id, kit)
            report.folders[index] = _evaluated(report.folders[index], status, db, version_id)
    return report


def _record(
    db: Database, name: str, repo: str, commit: str, found: list[tuple[str, PluginSource]], report: TeamSync
) -> list[tuple[int, int]]:
    """Store the folders' versions and withdraw vanished plugins; return (report index, version) to evaluate."""
    todo = []
    with db.session() as session:
        team = session.scalar(select(Team).where(Team.name == name))
        names = [_plugin_name(session, team, path, source) for path, source in found]
        for (path, source), plugin_name in zip(found, names, strict=True):
            source.origin, source.commit = f"{redact(repo)}@{commit[:12]}:{path}", commit
            if names.count(plugin_name) > 1:
                source.errors.append(f"{path}: another folder of this repository names the plugin '{plugin_name}' too")
            if source.manifest and source.manifest.team != name:
                source.errors.append(
                    f"{path}/plugin.toml: team = '{source.manifest.team}', but this repository belongs to team '{name}'"
                )
            version, new = versions.store_version(session, source, team_name=name, path=path, name=plugin_name)
            if new:
                version.checks = {"folder": source.errors}  # what reading the folder found, for evaluate()
            status = {"valid": "unchanged"}.get(version.status, version.status) if not new else "new"
            report.folders.append(
                FolderReport(path, f"{name}/{plugin_name}", version.plugin.kind, source.content_hash, status)
            )
            report.folders[-1].errors = _errors(version)
            if new or version.status in WAITING:
                todo.append((len(report.folders) - 1, version.id))
        now = datetime.now(UTC)
        team.synced_commit, team.synced_at = commit, now
        submitted = session.scalars(
            select(Plugin).where(
                Plugin.team_id == team.id,
                Plugin.withdrawn_at.is_(None),
                Plugin.versions.any(PluginVersion.path.is_not(None)),
            )
        )
        for plugin in submitted:
            if plugin.name not in names:
                plugin.withdrawn_at = now
                report.folders.append(FolderReport("", f"{name}/{plugin.name}", plugin.kind, "", "withdrawn"))
    return todo


def _plugin_name(session: Session, team: Team, path: str, source: PluginSource) -> str:
    """The plugin a folder holds: its manifest's name; without a readable manifest, the folder's last plugin."""
    if source.manifest is not None:
        return source.manifest.name
    known = session.scalar(
        select(Plugin.name)
        .join(PluginVersion, PluginVersion.plugin_id == Plugin.id)
        .where(Plugin.team_id == team.id, PluginVersion.path == path)
        .order_by(PluginVersion.id.desc())
        .limit(1)
    )
    return known or PurePosixPath(path).name


def evaluate(db: Database, settings: Settings, version_id: int, kit: Callable[[], validation.SmokeKit] | None) -> str:
    """Validate a version (with a smoke match when ``kit`` is given) within its team's daily limit.

    Returns its new status: ``valid``, ``invalid``, ``deferred`` (over the limit) or ``error`` (the arena
    failed to evaluate it: nothing counted, tried again at the next sync).
    """
    now = datetime.now(UTC)
    with db.session() as session:
        version = session.get(PluginVersion, version_id)
        team = version.plugin.team
        if version.status in ("valid", "invalid"):
            return version.status
        used = session.scalar(
            select(func.count())
            .select_from(PluginVersion)
            .join(Plugin, PluginVersion.plugin_id == Plugin.id)
            .where(
                Plugin.team_id == team.id,
                PluginVersion.status.in_(("valid", "invalid")),
                PluginVersion.evaluated_at >= now - timedelta(days=1),
            )
        )
        limit = daily_limit(team)
        if used >= limit:
            first = session.scalar(
                select(func.min(PluginVersion.evaluated_at))
                .join(Plugin, PluginVersion.plugin_id == Plugin.id)
                .where(Plugin.team_id == team.id, PluginVersion.evaluated_at >= now - timedelta(days=1))
            )
            after = f"after {(first + timedelta(days=1)):%Y-%m-%d %H:%M} UTC" if first else "later"
            version.status, version.valid = "deferred", False
            version.errors = (
                f"daily limit reached: team {team.name} may have {limit} versions evaluated per 24 hours; "
                f"this one is evaluated by the first sync {after}"
            )
            return "deferred"
        source = PluginSource.from_archive(version.archive, version.source, version.commit)
        found = (version.checks or {}).get("folder")
        if found is not None:  # what reading the folder found (an unreadable manifest among it)
            source.errors = list(found)
    try:
        checked = validation.validate(source, settings.home / "plugin-cache", kit() if kit else None)
    except (SandboxError, validation.BaselineError) as exc:
        with db.session() as session:
            version = session.get(PluginVersion, version_id)
            version.status, version.valid = "error", False
            version.errors = f"the arena could not evaluate this version (not counted; tried again next sync): {exc}"
        return "error"
    with db.session() as session:
        version = session.get(PluginVersion, version_id)
        versions.apply_validation(version, checked)
        return version.status


def _evaluated(folder: FolderReport, status: str, db: Database, version_id: int) -> FolderReport:
    folder.status = "new" if status == "valid" else status
    with db.session() as session:
        folder.errors = _errors(session.get(PluginVersion, version_id))
    return folder


def _errors(version: PluginVersion) -> list[str]:
    return version.errors.splitlines() if version.errors else []


# --------------------------------------------------------------------------------------------------
# Git
# --------------------------------------------------------------------------------------------------


def fetch(mirror: Path, repo: str, branch: str) -> str:
    """Fetch ``branch`` of ``repo`` into the bare ``mirror``; return the commit it points to."""
    if not (mirror / "HEAD").exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        _git("init", "--bare", "--quiet", str(mirror))
    refspec = f"+refs/heads/{branch}:refs/heads/{branch}"
    try:
        _git("-C", str(mirror), "fetch", "--quiet", "--no-tags", "--", repo, refspec)
    except SubmissionError as exc:
        raise SubmissionError(f"cannot fetch branch '{branch}' of {redact(repo)}: {exc}") from None
    return _git("-C", str(mirror), "rev-parse", "--verify", f"refs/heads/{branch}^{{commit}}").decode().strip()


def read_folders(mirror: Path, commit: str, folder: str | None = None) -> list[tuple[str, PluginSource]]:
    """Every plugin folder at ``commit`` (under ``folder`` of a shared repository), read from git's objects.

    Each comes back as its path and a :class:`PluginSource` (problems recorded in its ``errors``): the
    checks of a plugin folder on disk apply, and links, submodules and oversized folders are refused.
    """
    prefix = f"{folder}/" if folder else ""
    roots = [f"{prefix}{root}" for root in PLUGIN_ROOTS]
    listing = _git("-C", str(mirror), "ls-tree", "-r", "-l", "-z", "--full-tree", commit, "--", *roots)
    folders: dict[str, list[tuple[str, str, str, int]]] = {}
    for record in filter(None, listing.split(b"\0")):
        meta, path = record.decode("utf-8", errors="replace").split("\t", 1)
        mode, kind, obj, size = meta.split()
        parts = PurePosixPath(path.removeprefix(prefix)).parts
        if len(parts) > 3:  # plugins/<kind>s/<name>/...: a file of a plugin folder
            name = "/".join(parts[:3])
            folders.setdefault(name, []).append((mode, obj, "/".join(parts[3:]), int(size) if size.isdigit() else 0))
    found = []
    for path, entries in sorted(folders.items()):
        found.append((f"{prefix}{path}", _read_folder(mirror, path, entries)))
    return found


def _read_folder(mirror: Path, path: str, entries: list[tuple[str, str, str, int]]) -> PluginSource:
    kind = PLUGIN_ROOTS[path.rsplit("/", 1)[0]]
    refused = [name for mode, _, name, _ in entries if mode in (LINK_MODE, SUBMODULE_MODE) or not _plain(name)]
    total = sum(size for *_, size in entries)
    if refused or total > MAX_PLUGIN_BYTES:
        problem = (
            f"{path}: links, submodules and odd file names are not allowed in a plugin folder: {', '.join(refused)}"
            if refused
            else f"{path}: the folder holds {total} bytes; a plugin may hold {MAX_PLUGIN_BYTES} at most"
        )
        return PluginSource(origin=path, files={}, errors=[problem])
    blobs = _cat(mirror, [obj for _, obj, _, _ in entries])
    with tempfile.TemporaryDirectory(prefix="arena-sync-") as tmp:
        root = Path(tmp) / Path(path).name
        for (_, _, name, _), data in zip(entries, blobs, strict=True):
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return plugins.read_folder(root, expected_kind=kind)


def _plain(name: str) -> bool:
    """Whether a file name from a git tree stays inside its folder (a crafted tree may hold '..')."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and not any(p in ("", ".", "..") for p in parts)


def _cat(mirror: Path, objects: list[str]) -> list[bytes]:
    """The contents of git ``objects`` (blobs), in order."""
    out = _git("-C", str(mirror), "cat-file", "--batch", stdin="".join(f"{o}\n" for o in objects).encode())
    contents, offset = [], 0
    for _ in objects:
        header_end = out.index(b"\n", offset)
        size = int(out[offset:header_end].split()[2])
        contents.append(out[header_end + 1 : header_end + 1 + size])
        offset = header_end + 1 + size + 1
    return contents


def _git(*args: str, stdin: bytes | None = None) -> bytes:
    """Run git (without the variables of a hook that runs it: GIT_DIR and the like); raise on failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {"GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(["git", *args], input=stdin, capture_output=True, env=env, timeout=GIT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SubmissionError(redact(f"git {args[0]}: {exc}")) from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise SubmissionError(redact(said[-1]) if said else f"git {args[0]} exited with status {done.returncode}")
    return done.stdout


def _folder(path: str) -> str:
    """A relative folder of a repository, normalised; refuse absolute paths and '..'."""
    clean = PurePosixPath(path.strip("/"))
    if not path.strip("/") or path.startswith("/") or ".." in clean.parts:
        raise SubmissionError(f"folder {path!r}: give a relative path inside the repository")
    return str(clean)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One sync at a time per mirror (two pushes in quick succession run two hooks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _lazy(make: Callable[[], validation.SmokeKit]) -> Callable[[], validation.SmokeKit]:
    """``make`` called at most once, on first use (the kit trains the baseline the first time)."""
    made: list[validation.SmokeKit] = []

    def get() -> validation.SmokeKit:
        if not made:
            made.append(make())
        return made[0]

    return get


# --------------------------------------------------------------------------------------------------
# The post-receive hook
# --------------------------------------------------------------------------------------------------


def install_hook(bare_repo: Path, team: str | None, background: bool = False) -> Path:
    """Install a ``post-receive`` hook in ``bare_repo``: a push syncs ``team`` (every team when None).

    The hook runs this Python with this process's ``ARENA_*`` settings; in the foreground the pusher
    sees the validation's outcome in ``git push``'s output, in the ``background`` the push returns at
    once and the outcome goes to ``ARENA_HOME/logs``.
    """
    bare_repo = bare_repo.resolve()
    try:
        bare = _git("-C", str(bare_repo), "rev-parse", "--is-bare-repository").decode().strip() == "true"
    except SubmissionError as exc:
        raise SubmissionError(f"{bare_repo} is not a git repository: {exc}") from None
    if not bare:
        raise SubmissionError(f"{bare_repo} is not a bare repository (the one teams push to)")
    hook = bare_repo / "hooks" / "post-receive"
    if hook.exists() and HOOK_MARKER not in hook.read_text(errors="replace"):
        raise SubmissionError(f"{hook} exists and is not the arena's: merge it by hand, or move it away")
    settings = Settings.from_env()
    env = {k: v for k, v in os.environ.items() if k.startswith("ARENA_")} | {"ARENA_HOME": str(settings.home)}
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    command = [sys.executable, "-c", "import sys; from arena.commands.cli import main; sys.exit(main())", "sync"]
    command += ["--team", team] if team else []
    run = " ".join(map(shlex.quote, command))
    if background:
        logs = settings.home / "logs"
        run = f"mkdir -p {shlex.quote(str(logs))}; nohup {run} >> {shlex.quote(str(logs / 'sync.log'))} 2>&1 &"
    else:
        run = f"exec {run}"
    lines = ["#!/bin/sh", HOOK_MARKER, "unset GIT_DIR GIT_WORK_TREE GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    lines += ["cat > /dev/null  # the pushed refs: the sync fetches the team's branch itself", run, ""]
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("\n".join(lines))
    hook.chmod(0o755)
    return hook
