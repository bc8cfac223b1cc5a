"""One match: its metrics, per-sample outcomes, perturbation norms, failure and log, and its gallery."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from flask import abort, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.results.access import relative_paths
from arena.results.curves import robustness_curve
from arena.results.scoring import plugin_entries
from arena.store import Result, TrackRow
from arena.store.records import unpack
from leaderboard import gallery
from leaderboard.lookup import database, get_or_404
from leaderboard.signin import private_log
from leaderboard.visibility import shows_result

#: per-sample outcomes counted on the match page, in the order shown
OUTCOMES = (
    "clean_correct",
    "clean_rejected",
    "adv_correct",
    "adv_rejected",
    "survived",
    "success",
    "target_hit",
    "violated",
)
NORMS = ("l0", "l2", "linf")


def match(result_id: int) -> dict[str, Any]:
    """Everything the arena recorded about the match whose result has id ``result_id`` (403 before a
    published round shows it, but for its teams and the instructor)."""
    with database().session() as session:
        result = get_or_404(session, Result, result_id, "match")
        entries = plugin_entries(session, {result.attack_version_id, result.defense_version_id})
        _embargo(
            session,
            result.id,
            result.key,
            {entries[v].team_id for v in (result.attack_version_id, result.defense_version_id)},
        )
        track = session.scalar(select(TrackRow.config).where(TrackRow.name == result.track))
        attempts = session.execute(
            select(Result.id, Result.attempt, Result.status, Result.created_at)
            .where(Result.content_key == result.content_key)
            .order_by(Result.attempt)
        ).all()
    records = unpack(result.samples) if result.samples else None
    shown = unpack(result.gallery) if result.gallery else None
    return {
        "id": result.id,
        "key": result.key,
        "attempt": result.attempt,
        "attempts": [
            {"id": a.id, "attempt": a.attempt, "status": a.status, "created_at": a.created_at.isoformat()}
            for a in attempts
        ],
        "status": result.status,
        "error": relative_paths(result.error),
        **private_log(result.log_tail, _log_owners(entries, result)),
        "attack": asdict(entries[result.attack_version_id]),
        "defense": asdict(entries[result.defense_version_id]),
        "track": result.track,
        "track_config": track,
        "threat": result.threat,
        "seed": result.seed,
        "referee_version": result.referee_version,
        "wall_time": result.wall_time,
        "created_at": result.created_at.isoformat(),
        "metrics": result.metrics,
        "outcomes": _outcomes(records) if records else None,
        "norms": _norms(records) if records else None,
        "curve": _curve(records, result.metrics or {}),
        "amplification": gallery.amplification(shown) if shown else None,
        "gallery": _items(result.id, shown, records) if shown else [],
    }


def _log_owners(entries: dict[int, Any], result: Result) -> set[int]:
    """The teams whose log a match's log tail is: the attack's (its process printed it; a defense that
    failed reads why in the match's public reason, and its own logs on its plugin's page)."""
    return {entries[result.attack_version_id].team_id}


def image(result_id: int, item: int, kind: str) -> bytes:
    """Gallery item ``item`` of the match drawn as ``kind`` (clean, adversarial, perturbation), as PNG."""
    with database().session() as session:
        columns = (Result.id, Result.key, Result.gallery, Result.attack_version_id, Result.defense_version_id)
        row = session.execute(select(*columns).where(Result.id == result_id)).first()
        if row is None:
            abort(404, f"no match {result_id}")
        entries = plugin_entries(session, {row.attack_version_id, row.defense_version_id})
        _embargo(session, row.id, row.key, {entry.team_id for entry in entries.values()})
    if row.gallery is None:
        abort(404, f"match {result_id} has no gallery")
    try:
        return gallery.png(unpack(row.gallery), item, kind)
    except (ValueError, IndexError) as error:
        abort(404, str(error))


def _embargo(session: Session, result_id: int, key: str, owners: set[int]) -> None:
    """403 unless the viewer may see the match: a published round shows it, or the viewer owns a side of it."""
    if not shows_result(session, key, owners):
        abort(403, f"match {result_id} belongs to a round not published yet: its teams see it when signed in")


def _curve(records: dict[str, np.ndarray] | None, metrics: dict[str, Any]) -> list[dict[str, float]]:
    """Robust accuracy against the budget, from 0 to the track's eps (empty without records)."""
    if not records or metrics.get("norm") not in NORMS or not metrics.get("eps"):
        return []
    return robustness_curve([records], metrics["norm"], float(metrics["eps"]))


def _outcomes(records: dict[str, np.ndarray]) -> dict[str, int]:
    """How many samples had each outcome, out of ``n``."""
    counts = {"n": len(records["label"])}
    return counts | {name: int(np.count_nonzero(records[name])) for name in OUTCOMES if name in records}


def _norms(records: dict[str, np.ndarray]) -> dict[str, dict[str, float] | None]:
    """Mean, median and largest perturbation norm over the successful samples (``None`` when none)."""
    success = records["success"].astype(bool)
    spread = {}
    for norm in NORMS:
        values = records[norm][success] if norm in records else np.empty(0)
        spread[norm] = (
            {"mean": float(values.mean()), "median": float(np.median(values)), "max": float(values.max())}
            if values.size
            else None
        )
    return spread


def _items(result_id: int, shown: dict[str, np.ndarray], records: dict[str, np.ndarray] | None) -> list[dict]:
    items = []
    for item, position in enumerate(shown["position"].tolist()):
        items.append(
            {
                "position": position,
                "label": int(shown["label"][item]),
                "clean_pred": int(shown["clean_pred"][item]),
                "adv_pred": int(shown["adv_pred"][item]),
                "success": bool(records["success"][position]) if records else None,
                "images": {
                    kind: url_for("board.gallery_image", result_id=result_id, item=item, kind=kind)
                    for kind in gallery.KINDS
                },
            }
        )
    return items
