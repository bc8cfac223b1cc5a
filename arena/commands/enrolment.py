"""Enrolling a class from a file (``arena team import FILE``), and each team's webhook secret.

Three kinds of file, told apart by their header:

* **GitHub Classroom's assignment export** (an assignment's *Download grades* CSV): ``assignment_name,
  assignment_url, starter_code_url, github_username, roster_identifier, student_repository_name,
  student_repository_url, submission_timestamp, points_awarded, points_available`` and, for a group
  assignment, ``group_name``. A team per repository, named by its group (spaces become ``-``) or its student's
  GitHub user name; a student who has not accepted the assignment yet (no repository) is skipped.
* **GitHub Classroom's roster** (``classroom_roster.csv``: ``identifier, github_username, github_id, name``),
  which names no repository: ``--repo-pattern`` makes each student's URL from their GitHub user name.
* **A plain CSV** of ``name, repo, branch, path`` (a header row is optional; ``branch`` and ``path`` may be
  left out or empty).

Every row is checked before anything is written: a file with a bad row (its line number named) adds
nothing. Importing the same file again changes nothing and prints no credential; a row that changes a known
team's repository, branch or folder updates it. Each new team's board token and webhook secret are printed
once. The token is stored as its SHA-256 (:mod:`arena.results.access`); the webhook secret is stored as it is,
because checking GitHub's and Gitea's signatures needs the key itself (``arena team secret NAME`` replaces it).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.classroom import submissions
from arena.classroom.submissions import SubmissionError
from arena.classroom.webhooks import new_secret, repo_key
from arena.config import Settings
from arena.results import access
from arena.results.redaction import redact
from arena.store import Database, Team

CLASSROOM_EXPORT = {"github_username", "student_repository_url"}
CLASSROOM_ROSTER = {"identifier", "github_username", "github_id", "name"}
PLAIN = ("name", "repo", "branch", "path")
#: other names of the plain file's columns
ALIASES = {"team": "name", "repository": "repo", "repo_url": "repo", "url": "repo", "folder": "path"}
#: the fields a ``--repo-pattern`` may name: ``https://github.com/class/arena-{github_username}``
PATTERN_FIELD = re.compile(r"\{(github_username|identifier|github_id)\}")


class EnrolmentError(ValueError):
    """A roster file the arena cannot import: every bad row, by line number."""


@dataclass
class Row:
    """One team a roster file asks for, and the line that first asks for it."""

    line: int
    name: str
    repo: str
    branch: str
    path: str | None


@dataclass
class Enrolled:
    """What an import did with one team; the credentials of a new team (shown once)."""

    name: str
    status: str  # new | updated | unchanged
    repo: str
    branch: str
    path: str | None
    token: str | None = None
    secret: str | None = None


@dataclass
class Roster:
    """A roster file read: its kind, its teams, and the rows skipped (no repository yet) with the reason."""

    kind: str
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def issue_secret(session: Session, team_id: int) -> str:
    """A new webhook secret for the team; the previous one stops verifying pushes. Shown once."""
    secret = new_secret()
    session.get(Team, team_id).hook_secret = secret
    return secret


def read(path: Path, branch: str = "main", repo_pattern: str | None = None) -> Roster:
    """The teams of a roster file, every row checked; :class:`EnrolmentError` lists the bad ones by line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrolmentError(f"{path}: cannot read it ({exc})") from None
    records = [(line, cells) for line, cells in _records(text) if any(c.strip() for c in cells)]
    if not records:
        raise EnrolmentError(f"{path}: no rows")
    header = [c.strip().lower() for c in records[0][1]]
    if set(header) >= CLASSROOM_EXPORT:
        roster = _classroom(records, header, "github classroom export", branch, None)
    elif set(header) >= CLASSROOM_ROSTER:
        if not repo_pattern:
            raise EnrolmentError(
                f"{path} is GitHub Classroom's roster, which names no repository: give --repo-pattern "
                "(e.g. https://github.com/ORG/arena-{github_username}), or import the assignment's export "
                "(Download grades), which names each student's repository"
            )
        roster = _classroom(records, header, "github classroom roster", branch, repo_pattern)
    else:
        roster = _plain(records, branch)
    _check(roster, path)
    return roster


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """Each CSV record with the line it starts on."""
    reader = csv.reader(io.StringIO(text))
    start = 1
    for cells in reader:
        yield start, cells
        start = reader.line_num + 1


def _classroom(
    records: list[tuple[int, list[str]]], header: list[str], kind: str, branch: str, pattern: str | None
) -> Roster:
    """A GitHub Classroom file: a team per repository (its group, else its student)."""
    roster = Roster(kind)
    for line, cells in records[1:]:
        row = dict(zip(header, (c.strip() for c in cells), strict=False))
        user, group = row.get("github_username", ""), row.get("group_name", "")
        if pattern:
            repo = PATTERN_FIELD.sub(lambda m, row=row: row.get(m[1], ""), pattern) if user else ""
        else:
            repo = row.get("student_repository_url", "")
        if not user and not group:
            roster.skipped.append(f"line {line}: no GitHub user name yet (the student has not joined the classroom)")
        elif not repo:
            roster.skipped.append(f"line {line}: {group or user} has no repository yet (not accepted the assignment)")
        else:
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", group).strip("-") if group else user
            roster.rows.append(Row(line, name, repo, branch, None))
    return roster


def _plain(records: list[tuple[int, list[str]]], branch: str) -> Roster:
    """A plain CSV: name, repository URL, branch, path; with a header row (in any order) or without."""
    first = [ALIASES.get(c.strip().lower(), c.strip().lower()) for c in records[0][1]]
    header = bool(set(first) & set(PLAIN))
    if header and not {"name", "repo"} <= set(first):
        raise EnrolmentError(f"line {records[0][0]}: a header row needs the columns name and repo (then branch, path)")
    columns = first if header else list(PLAIN)
    roster = Roster("plain csv")
    for line, cells in records[1:] if header else records:
        if len(cells) > len(columns) and any(c.strip() for c in cells[len(columns) :]):
            roster.errors.append(f"line {line}: {len(cells)} columns; a row holds {', '.join(columns)}")
            continue
        row = dict(zip(columns, (c.strip() for c in cells), strict=False))
        name, repo, folder = row.get("name", ""), row.get("repo", ""), row.get("path") or None
        roster.rows.append(Row(line, name, repo, row.get("branch") or branch, folder))
    return roster


def _check(roster: Roster, path: Path) -> None:
    """Refuse the file if any row is bad: a name, repository, branch or folder that cannot be, or a team asked
    for twice with other settings, or two teams on one repository and folder."""
    seen: dict[str, Row] = {}
    places: dict[tuple[str, str | None], Row] = {}
    for row in roster.rows:
        try:
            row.path = submissions.check_team(row.name, row.repo, row.branch, row.path)
        except SubmissionError as exc:
            roster.errors.append(f"line {row.line}: {exc}")
            continue
        earlier = seen.setdefault(row.name, row)
        other = places.setdefault((repo_key(row.repo), row.path), row)
        if (earlier.repo, earlier.branch, earlier.path) != (row.repo, row.branch, row.path):
            roster.errors.append(f"line {row.line}: team {row.name} is on line {earlier.line} too, with other settings")
        elif other.name != row.name:
            roster.errors.append(f"line {row.line}: {_shared(row.name, other.name, other.line)}")
    if roster.errors:
        raise EnrolmentError(
            f"{path}: nothing imported; fix these rows:\n" + "\n".join(sorted(roster.errors, key=_line))
        )
    unique: dict[str, Row] = {}
    roster.rows = [unique.setdefault(r.name, r) for r in roster.rows if r.name not in unique]


def _shared(name: str, other: str, line: int | None = None) -> str:
    where = f" (line {line})" if line is not None else " (registered already)"
    return (
        f"team {name} has the repository and folder of team {other}{where}; teams sharing a repository need "
        "folders of their own (path)"
    )


def _line(error: str) -> int:
    found = re.match(r"line (\d+)", error)
    return int(found[1]) if found else 0


def enrol(db: Database, roster: Roster) -> list[Enrolled]:
    """Add the roster's new teams (each with a board token and a webhook secret) and update the changed ones, in
    one transaction; the teams already there as the file says are left alone. A row on the repository and
    folder of another registered team refuses the whole file."""
    done = []
    with db.session() as session:
        teams = {t.name: t for t in session.scalars(select(Team))}
        places = {(repo_key(t.repo_url), t.path): t.name for t in teams.values() if t.repo_url}
        clashes = [
            f"line {row.line}: {_shared(row.name, places[key])}"
            for row in roster.rows
            if places.get(key := (repo_key(row.repo), row.path), row.name) != row.name
            and places[key] not in {r.name for r in roster.rows}
        ]
        if clashes:
            raise EnrolmentError("nothing imported; fix these rows:\n" + "\n".join(clashes))
        for row in roster.rows:
            done.append(_enrol(session, teams.get(row.name), row))
    return done


def _enrol(session: Session, team: Team | None, row: Row) -> Enrolled:
    """Add or update one team; a new one gets its credentials."""
    wanted = (row.repo, row.branch, row.path)
    if team is not None and (team.repo_url, team.branch, team.path) == wanted:
        return Enrolled(row.name, "unchanged", *wanted)
    enrolled = Enrolled(row.name, "new" if team is None else "updated", *wanted)
    team = team or Team(name=row.name)
    team.repo_url, team.branch, team.path = wanted
    session.add(team)
    session.flush()
    if enrolled.status == "new":
        enrolled.token, enrolled.secret = access.issue(session, team.id), issue_secret(session, team.id)
    return enrolled


# --------------------------------------------------------------------------------------------------
# Commands: `arena team import`, `arena team secret` (registered on `arena team` by arena.commands.admin)
# --------------------------------------------------------------------------------------------------


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--branch", default="main", show_default=True, help="The branch of rows that name none.")
@click.option(
    "--repo-pattern",
    help="For a GitHub Classroom roster: each student's repository, e.g. "
    "https://github.com/ORG/arena-{github_username}.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (new teams' credentials included, once).")
def import_command(file: Path, branch: str, repo_pattern: str | None, as_json: bool) -> None:
    """Register the teams of FILE: GitHub Classroom's assignment export or roster, or a CSV of name, repo,
    branch, path. Prints each new team's board token and webhook secret, once; a second run changes nothing."""
    settings = Settings.from_env()
    db = Database(settings.database_url)
    db.upgrade()
    try:
        roster = read(file, branch, repo_pattern)
        done = enrol(db, roster)
    except EnrolmentError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([vars(e) for e in done], indent=2))
        return
    counts = {status: sum(e.status == status for e in done) for status in ("new", "updated", "unchanged")}
    click.echo(f"{file} ({roster.kind}): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for note in roster.skipped:
        click.echo(f"  skipped {note}")
    for e in done:
        if e.status != "unchanged":
            click.echo(f"{e.status} team {e.name}: {redact(e.repo)} ({e.branch}{', ' + e.path if e.path else ''})")
        if e.token:
            print_credentials(e.name, e.token, e.secret)


@click.command("secret")
@click.argument("name")
def secret_command(name: str) -> None:
    """A new webhook secret for team NAME (paste it into its repository's webhook); the previous one stops working."""
    db = Database(Settings.from_env().database_url)
    db.upgrade()
    with db.session() as session:
        team_id = session.scalar(select(Team.id).where(Team.name == name))
        if team_id is None:
            raise click.ClickException(f"no team {name!r}: `arena team add {name} --repo URL` first")
        print_credentials(name, None, issue_secret(session, team_id))


def print_credentials(name: str, token: str | None, secret: str | None) -> None:
    """Print team ``name``'s new board token and webhook secret (each shown once)."""
    if token:
        click.echo(f"board token of team {name} (shown once; `arena team token {name}` makes a new one): {token}")
    if secret:
        click.echo(f"webhook secret of team {name} (shown once; `arena team secret {name}` makes a new one): {secret}")
        click.echo("  paste it into its repository's webhook: POST <board>/hooks/push, application/json, push events")
