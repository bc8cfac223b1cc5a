"""A round's figures as tables: rankings, matrices and per-sample results, as CSV (or JSON-ready rows).

``arena export`` writes them into a folder; the board offers the same tables per board (``/export/...``).
Every row names its round, track and threat, so tables of several rounds can be stacked. Errors are
shown without the server's paths (:func:`arena.results.access.relative_paths`); logs are never exported.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.results.access import relative_paths
from arena.results.boards import Board, Entry
from arena.results.scoring import round_standings
from arena.store import Result, Round
from arena.store.records import unpack

TABLES = ("rankings", "matrix", "samples")
#: the per-sample columns exported (see docs/architecture.md, "Per-sample records")
SAMPLE_COLUMNS = (
    "index", "label", "target", "clean_pred", "adv_pred", "clean_correct", "clean_rejected", "adv_correct",
    "adv_rejected", "survived", "success", "violated", "l0", "l2", "linf",
)  # fmt: skip


def rows(session: Session, round_: Round, table: str, track: str | None = None, threat: str | None = None) -> list:
    """The rows of ``table`` (one of :data:`TABLES`) for the round's boards (or one board's)."""
    boards = round_standings(session, round_.id, track, threat)
    make = {"rankings": _rankings, "matrix": _matrix, "samples": _samples}[table]
    return [row for board in boards for row in make(session, round_.number, board)]


def as_csv(table: list[dict[str, Any]]) -> str:
    """Rows as CSV text, with a header (empty text for no rows)."""
    if not table:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()


def _names(prefix: str, entry: Entry) -> dict[str, Any]:
    """A plugin version's columns: ``PREFIX_team``, ``PREFIX`` (its name) and ``PREFIX_version``."""
    return {f"{prefix}_team": entry.team, prefix: entry.plugin, f"{prefix}_version": entry.version}


def _rankings(_session: Session, number: int, board: Board) -> Iterator[dict[str, Any]]:
    where = {"round": number, "track": board.track, "threat": board.threat}
    for d in board.defenses:
        yield {
            **where, "kind": "defense", "rank": d.rank, **_names("plugin", d.entry), "commit": d.entry.commit,
            "score": d.worst_case_robust_accuracy, "clean_accuracy": d.clean_accuracy,
            "mean_robust_accuracy": d.mean_robust_accuracy, "unique_breaks": None, "below_floor": d.below_floor,
            "played": d.attacks, "failed": d.failed, "pending": d.pending,
        }  # fmt: skip
    for a in board.attacks:
        yield {
            **where, "kind": "attack", "rank": a.rank, **_names("plugin", a.entry), "commit": a.entry.commit,
            "score": a.mean_success_rate, "clean_accuracy": None, "mean_robust_accuracy": None,
            "unique_breaks": a.unique_breaks, "below_floor": None, "played": a.defenses, "failed": a.failed,
            "pending": a.pending,
        }  # fmt: skip


def _matrix(_session: Session, number: int, board: Board) -> Iterator[dict[str, Any]]:
    where = {"round": number, "track": board.track, "threat": board.threat}
    for attack, cells in zip(board.attacks, board.matrix, strict=True):
        for defense, cell in zip(board.defenses, cells, strict=True):
            if cell is None:
                continue
            yield {
                **where, **_names("attack", attack.entry), **_names("defense", defense.entry),
                "status": cell.status, "robust_accuracy": cell.robust_accuracy, "success_rate": cell.success_rate,
                "target_hit_rate": cell.target_hit_rate, "violations": cell.violations, "blame": cell.blame,
                "error": relative_paths(cell.error), "result_id": cell.result_id,
            }  # fmt: skip


def _samples(session: Session, number: int, board: Board) -> Iterator[dict[str, Any]]:
    pairs = [
        (attack, defense, cell.result_id)
        for attack, cells in zip(board.attacks, board.matrix, strict=True)
        for defense, cell in zip(board.defenses, cells, strict=True)
        if cell is not None and cell.status == "ok" and cell.result_id is not None
    ]
    ids = [result_id for *_, result_id in pairs]
    stored = dict(session.execute(select(Result.id, Result.samples).where(Result.id.in_(ids))).all())  # one query
    where = {"round": number, "track": board.track, "threat": board.threat}
    for attack, defense, result_id in pairs:
        records = unpack(stored[result_id]) if stored.get(result_id) else {}
        names = _names("attack", attack.entry) | _names("defense", defense.entry)
        for i in range(len(records.get("index", ()))):
            yield where | names | {c: records[c][i].item() for c in SAMPLE_COLUMNS if c in records}
