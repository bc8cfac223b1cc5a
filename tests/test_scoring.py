"""Rankings over a round's results, computed from real rows in a real SQLite database."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from arena.records import pack
from arena.scoring import latest_round, played_boards, round_standings
from arena.store import Database, Plugin, PluginVersion, Result, Round, RoundMatch, Team, Track


class Rows:
    """Writes the rows a round's board reads: teams, plugin versions, tracks, rounds, matches, results."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def version(self, team: str, plugin: str, kind: str, commit: str | None = None) -> int:
        """A plugin version (with its team and plugin, created when new); returns its id."""
        with self.db.session() as s:
            owner = s.scalar(select(Team).where(Team.name == team)) or Team(name=team)
            version = PluginVersion(
                plugin=Plugin(team=owner, name=plugin, kind=kind),
                content_hash=hashlib.sha256(f"{team}/{plugin}".encode()).hexdigest(),
                commit=commit,
                source="tests",
                archive=b"",
                manifest={"name": plugin},
                valid=True,
            )
            s.add(version)
            s.flush()
            return version.id

    def track(self, name: str, **config: Any) -> None:
        """A track row with its configuration (``clean_floor`` among it)."""
        with self.db.session() as s:
            s.add(Track(name=name, config=config))

    def round(self, number: int, tracks: Sequence[str] = ("digits",)) -> int:
        """A round; returns its id."""
        with self.db.session() as s:
            round_ = Round(number=number, tracks=list(tracks), status="running")
            s.add(round_)
            s.flush()
            return round_.id

    def match(
        self,
        round_id: int,
        attack: int,
        defense: int,
        survived: Sequence[int] = (),
        *,
        clean: Sequence[int] | None = None,
        track: str = "digits",
        threat: str = "white-box",
        status: str = "ok",
        error: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> str:
        """A cell of the round; its result is written unless ``status`` is "pending". Returns the key."""
        key = hashlib.sha256(f"{attack}/{defense}/{track}/{threat}".encode()).hexdigest()
        with self.db.session() as s:
            ids = {"attack_version_id": attack, "defense_version_id": defense, "track": track, "threat": threat}
            s.add(RoundMatch(round_id=round_id, result_key=key, **ids))
            if status == "pending":
                return key
            samples = records(survived, clean) if status == "ok" else None
            s.add(
                Result(
                    key=key,
                    seed=0,
                    referee_version="1",
                    status=status,
                    error=error,
                    metrics=(metrics or {}) | (summary(samples) if samples else {}),
                    samples=pack(samples) if samples else None,
                    **ids,
                )
            )
        return key


def records(survived: Sequence[int], clean: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per-sample records in the documented format: ``clean`` (default all) correct, ``survived`` held."""
    n = len(survived)
    clean_correct = np.ones(n, bool) if clean is None else np.asarray(clean, bool)
    held = np.asarray(survived, bool) & clean_correct
    label = np.arange(n) % 10
    broken = clean_correct & ~held
    norm = np.where(broken, 0.5, 0.0)
    return {
        "index": np.arange(100, 100 + n),
        "label": label,
        "target": np.full(n, -1),
        "clean_pred": np.where(clean_correct, label, (label + 1) % 10),
        "adv_pred": np.where(held, label, (label + 1) % 10),
        "clean_correct": clean_correct,
        "clean_rejected": np.zeros(n, bool),
        "adv_correct": held,
        "adv_rejected": np.zeros(n, bool),
        "survived": held,
        "success": broken,
        "violated": np.zeros(n, bool),
        "l0": np.where(broken, 3, 0),
        "l2": norm,
        "linf": norm / 2,
    }


def summary(r: dict[str, np.ndarray]) -> dict[str, Any]:
    """Match metrics over the records, as the referee computes them."""
    clean = r["clean_correct"]
    return {
        "n": len(clean),
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": float(r["survived"].mean()),
        "success_rate": float(r["success"][clean].mean()) if clean.any() else 0.0,
        "mean_l2": float(r["l2"][r["success"]].mean()) if r["success"].any() else None,
        "mean_linf": float(r["linf"][r["success"]].mean()) if r["success"].any() else None,
        "queries_per_sample": 0.0,
    }


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A fresh SQLite database at the newest schema."""
    database = Database(f"sqlite:///{tmp_path / 'arena.db'}")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def rows(db: Database) -> Rows:
    return Rows(db)


def standings(db: Database, round_id: int, **which: str) -> list[Any]:
    with db.session() as s:
        return round_standings(s, round_id, **which)


def test_worst_case_counts_a_sample_broken_by_any_one_attack(db: Database, rows: Rows) -> None:
    fgsm, pgd, d = (
        rows.version("red", "fgsm", "attack"),
        rows.version("red", "pgd", "attack"),
        rows.version("blue", "madry", "defense", commit="abc123"),
    )
    r = rows.round(1)
    rows.match(r, fgsm, d, [0, 1, 1, 1])
    rows.match(r, pgd, d, [1, 0, 1, 1])

    (board,) = standings(db, r)
    (defense,) = board.defenses
    assert defense.worst_case_robust_accuracy == 0.5
    assert defense.mean_robust_accuracy == 0.75
    assert defense.clean_accuracy == 1.0
    assert (defense.attacks, defense.failed, defense.pending) == (2, 0, 0)
    assert defense.entry.team == "blue" and defense.entry.plugin == "madry"
    assert defense.entry.commit == "abc123" and len(defense.entry.version) == 12
    assert board.as_dict()["defenses"][0]["entry"]["version"] == defense.entry.version


def test_unique_breaks_count_defense_sample_pairs_no_other_attack_broke(db: Database, rows: Rows) -> None:
    a1, a2 = rows.version("red", "a1", "attack"), rows.version("green", "a2", "attack")
    d1, d2 = rows.version("blue", "d1", "defense"), rows.version("blue", "d2", "defense")
    r = rows.round(1)
    rows.match(r, a1, d1, [0, 0, 1, 1])  # sample 0 only by a1, sample 1 by both
    rows.match(r, a2, d1, [1, 0, 0, 1])  # sample 2 only by a2
    rows.match(r, a1, d2, [1, 1, 1, 0])  # sample 3 only by a1
    rows.match(r, a2, d2, [1, 1, 1, 1], clean=[0, 1, 1, 1])  # sample 0 not clean: never a break

    (board,) = standings(db, r)
    unique = {a.entry.plugin: a.unique_breaks for a in board.attacks}
    assert unique == {"a1": 2, "a2": 1}
    success = {a.entry.plugin: a.mean_success_rate for a in board.attacks}
    assert success == {"a1": pytest.approx((0.5 + 0.25) / 2), "a2": pytest.approx((0.5 + 0.0) / 2)}
    assert [a.entry.plugin for a in board.attacks] == ["a1", "a2"]
    d2_line = next(d for d in board.defenses if d.entry.plugin == "d2")
    assert d2_line.clean_accuracy == pytest.approx((1.0 + 0.75) / 2)
    assert d2_line.worst_case_robust_accuracy == 0.5  # sample 0 lost clean, sample 3 broken


def test_failed_results_are_counted_but_never_scored(db: Database, rows: Rows) -> None:
    good, bad = rows.version("red", "good", "attack"), rows.version("red", "crashy", "attack")
    d = rows.version("blue", "d", "defense")
    r = rows.round(1)
    rows.match(r, good, d, [1, 0, 1, 1])
    rows.match(r, bad, d, status="failed", error="TimeoutError: 60 s")

    (board,) = standings(db, r)
    (defense,) = board.defenses
    assert defense.worst_case_robust_accuracy == 0.75
    assert (defense.attacks, defense.failed) == (1, 1)
    crashy = board.attacks[-1]
    assert crashy.entry.plugin == "crashy"
    assert (crashy.mean_success_rate, crashy.defenses, crashy.failed, crashy.unique_breaks) == (None, 0, 1, 0)
    cell = board.matrix[1][0]
    assert (cell.status, cell.error, cell.robust_accuracy) == ("failed", "TimeoutError: 60 s", None)
    assert cell.result_id is not None


def test_pending_cells_have_no_result_yet(db: Database, rows: Rows) -> None:
    a1, a2, d = rows.version("r", "a1", "attack"), rows.version("r", "a2", "attack"), rows.version("b", "d", "defense")
    r = rows.round(1)
    done = rows.match(r, a1, d, [1, 1, 0, 0])
    waiting = rows.match(r, a2, d, status="pending")

    (board,) = standings(db, r)
    assert board.defenses[0].pending == 1 and board.defenses[0].worst_case_robust_accuracy == 0.5
    cells = {row[0].result_key: row[0] for row in board.matrix}
    assert cells[done].status == "ok" and cells[done].robust_accuracy == 0.5 and cells[done].success_rate == 0.5
    assert cells[waiting].status == "pending" and cells[waiting].result_id is None
    assert board.attacks[1].pending == 1


def test_defenses_below_the_clean_floor_rank_last(db: Database, rows: Rows) -> None:
    rows.track("digits", clean_floor=0.8)
    attack = rows.version("red", "pgd", "attack")
    weak, strong, tied, broken = (
        rows.version("blue", name, "defense") for name in ("weak", "strong", "tied", "broken")
    )
    r = rows.round(1)
    rows.match(r, attack, weak, [1, 1, 1, 1, 1], clean=[1, 1, 0, 0, 0])  # robust 0.4 but clean 0.4 < floor
    rows.match(r, attack, strong, [1, 1, 0, 0, 0])  # robust 0.4, clean 1.0
    rows.match(r, attack, tied, [1, 1, 0, 0, 0], clean=[1, 1, 1, 1, 0])  # robust 0.4, clean 0.8 = floor
    rows.match(r, attack, broken, [0, 0, 0, 0, 0])

    (board,) = standings(db, r)
    assert board.clean_floor == 0.8
    assert [d.entry.plugin for d in board.defenses] == ["strong", "tied", "broken", "weak"]
    assert [d.below_floor for d in board.defenses] == [False, False, False, True]


def test_a_track_without_a_floor_flags_nobody(db: Database, rows: Rows) -> None:
    attack, d = rows.version("r", "a", "attack"), rows.version("b", "d", "defense")
    r = rows.round(1)
    rows.match(r, attack, d, [0, 0], clean=[0, 0])
    (board,) = standings(db, r)
    assert board.clean_floor is None and not board.defenses[0].below_floor


def test_one_board_per_track_and_threat_in_the_rounds_order(db: Database, rows: Rows) -> None:
    attack, d = rows.version("r", "a", "attack"), rows.version("b", "d", "defense")
    r = rows.round(1, tracks=["mnist-linf", "digits"])
    for track, threat in [("digits", "black-box"), ("digits", "white-box"), ("mnist-linf", "gray-box")]:
        rows.match(r, attack, d, [1, 0], track=track, threat=threat)

    expected = [("mnist-linf", "gray-box"), ("digits", "white-box"), ("digits", "black-box")]
    assert [(b.track, b.threat) for b in standings(db, r)] == expected
    with db.session() as s:
        assert played_boards(s, r) == expected
    (only,) = standings(db, r, track="digits", threat="black-box")
    assert (only.track, only.threat) == ("digits", "black-box")


def test_results_on_other_samples_are_refused(db: Database, rows: Rows) -> None:
    a1, a2, d = rows.version("r", "a1", "attack"), rows.version("r", "a2", "attack"), rows.version("b", "d", "defense")
    r = rows.round(1)
    rows.match(r, a1, d, [1, 0, 1])
    rows.match(r, a2, d, [1, 0])
    with pytest.raises(ValueError, match="other samples"):
        standings(db, r)


def test_latest_round_is_the_highest_number(db: Database, rows: Rows) -> None:
    with db.session() as s:
        assert latest_round(s) is None
    rows.round(2)
    rows.round(1)
    with db.session() as s:
        assert latest_round(s).number == 2
    with db.session() as s, pytest.raises(LookupError):
        round_standings(s, 999)
