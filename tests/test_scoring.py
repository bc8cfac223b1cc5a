"""Rankings over a round's results, computed from real rows in a real SQLite database."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from arena.results.game import payoffs
from arena.results.history import BREAK_SUCCESS_RATE, history
from arena.results.scoring import OutcomeCache, latest_round, played_boards, round_standings, round_token
from arena.store import Database, Job, Plugin, PluginVersion, Result, Round, RoundEntry, RoundMatch, Team, TrackRow
from arena.store.records import pack


class Rows:
    """Writes the rows a round's board reads: teams, plugin versions, tracks, rounds, matches, results, jobs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def version(
        self,
        team: str,
        plugin: str,
        kind: str,
        commit: str | None = None,
        *,
        valid: bool = True,
        errors: str | None = None,
    ) -> int:
        """A new version of a plugin (its team and plugin created when new); returns its id."""
        with self.db.session() as s:
            owner = s.scalar(select(Team).where(Team.name == team)) or Team(name=team)
            found = s.scalar(select(Plugin).join(Team).where(Team.name == team, Plugin.name == plugin))
            found = found or Plugin(team=owner, name=plugin, kind=kind)
            version = PluginVersion(
                plugin=found,
                content_hash=hashlib.sha256(f"{team}/{plugin}/{len(found.versions)}".encode()).hexdigest(),
                commit=commit,
                source="tests",
                archive=b"",
                manifest={"name": plugin, "summary": f"{plugin} by {team}"},
                valid=valid,
                status="valid" if valid else "invalid",
                errors=errors,
            )
            s.add(version)
            s.flush()
            return version.id

    def track(self, name: str, **config: Any) -> None:
        """A track row with its configuration (``clean_floor`` among it)."""
        with self.db.session() as s:
            s.add(TrackRow(name=name, config=config))

    def round(
        self, number: int, tracks: Sequence[str] = ("digits",), status: str = "running", published: bool = False
    ) -> int:
        """A round; returns its id."""
        with self.db.session() as s:
            round_ = Round(number=number, tracks=list(tracks), status=status, published=published)
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
        log_tail: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> str:
        """A cell of the round; its result is written unless ``status`` is "pending". Returns the key."""
        key = self.cell(round_id, attack, defense, track=track, threat=threat)
        if status != "pending":
            ids = {"attack_version_id": attack, "defense_version_id": defense, "track": track, "threat": threat}
            self.result(
                key, survived, clean=clean, status=status, error=error, log_tail=log_tail, metrics=metrics, **ids
            )
        return key

    def cell(
        self, round_id: int, attack: int, defense: int, *, track: str = "digits", threat: str = "white-box"
    ) -> str:
        """A cell of the round linked to the pair's result key, whether or not the result exists (a later
        round reuses an earlier round's result this way). Returns the key."""
        key = hashlib.sha256(f"{attack}/{defense}/{track}/{threat}".encode()).hexdigest()
        with self.db.session() as s:
            ids = {"attack_version_id": attack, "defense_version_id": defense, "track": track, "threat": threat}
            s.add(RoundMatch(round_id=round_id, result_key=key, **ids))
            frozen = set(s.scalars(select(RoundEntry.plugin_version_id).where(RoundEntry.round_id == round_id)))
            s.add_all(RoundEntry(round_id=round_id, plugin_version_id=v) for v in {attack, defense} - frozen)
        return key

    def result(
        self,
        key: str,
        survived: Sequence[int] = (),
        *,
        clean: Sequence[int] | None = None,
        status: str = "ok",
        error: str | None = None,
        log_tail: str | None = None,
        metrics: dict[str, Any] | None = None,
        **ids: Any,
    ) -> int:
        """The result of a match (with per-sample records and a gallery when ok); returns its id."""
        samples = records(survived, clean) if status == "ok" else None
        with self.db.session() as s:
            result = Result(
                key=key,
                seed=0,
                referee_version="1",
                status=status,
                error=error,
                log_tail=log_tail,
                metrics=(summary(samples) if samples else {}) | (metrics or {}),
                samples=pack(samples) if samples else None,
                gallery=pack(gallery(samples)) if samples else None,
                **ids,
            )
            s.add(result)
            s.flush()
            return result.id

    def job(self, round_id: int | None, kind: str, state: str, **fields: Any) -> int:
        """A job of a round; ``fields`` sets params, error, log_tail, worker, attempts and times."""
        with self.db.session() as s:
            job = Job(round_id=round_id, kind=kind, key=hashlib.sha256(repr(fields).encode()).hexdigest(), state=state)
            job.params = fields.pop("params", {})
            for name, value in fields.items():
                setattr(job, name, value)
            s.add(job)
            s.flush()
            return job.id


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


def gallery(r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A gallery as the referee stores it: the first samples as 8x8 grey images, brightened where broken."""
    n = min(len(r["label"]), 8)
    clean = np.tile(np.linspace(0, 200, 64, dtype=np.uint8).reshape(1, 1, 8, 8), (n, 1, 1, 1))
    adversarial = clean.copy()
    adversarial[r["success"][:n], 0, 2, 3] += 50  # one brighter pixel on each broken sample
    return {
        "position": np.arange(n),
        "clean": clean,
        "adversarial": adversarial,
        "label": r["label"][:n],
        "clean_pred": r["clean_pred"][:n],
        "adv_pred": r["adv_pred"][:n],
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
        "violations": int(r["violated"].sum()),
        "draws": 1,
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


def test_a_disputed_match_is_neither_sides_failure_and_scores_nothing_for_the_attack(db: Database, rows: Rows) -> None:
    """Disputed for good (the defense's code failed only in the attack's process, the attack failed apart): not the
    attack's failure, 0 in its mean, not in the defense's worst case; played apart: scored, counted on both rows."""
    a, b = rows.version("red", "a", "attack"), rows.version("red", "b", "attack")
    d, e = rows.version("blue", "d", "defense"), rows.version("blue", "e", "defense")
    r = rows.round(1)
    rows.match(r, a, d, [1, 0, 1, 1])
    rows.match(r, b, d, status="failed", error="disputed: ...", metrics={"blame": "disputed"})
    rows.match(r, a, e, [0, 0, 1, 1], metrics={"disputed": "its forward failed ...; played again apart"})
    rows.match(r, b, e, [1, 1, 1, 1])

    (board,) = standings(db, r)
    by_name = {s.entry.plugin: s for s in [*board.defenses, *board.attacks]}
    assert (by_name["d"].worst_case_robust_accuracy, by_name["d"].disputed, by_name["d"].forfeited) == (0.75, 1, 0)
    assert (by_name["e"].worst_case_robust_accuracy, by_name["e"].disputed) == (0.5, 1)
    assert (by_name["b"].failed, by_name["b"].disputed, by_name["b"].mean_success_rate) == (0, 1, 0.0)
    assert (by_name["a"].failed, by_name["a"].disputed) == (0, 1)
    matrix, complete = payoffs(board)
    assert not complete and matrix[[x.entry.plugin for x in board.attacks].index("b")][0] == 0.0


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


def test_ties_share_a_rank_and_are_listed_by_name(db: Database, rows: Rows) -> None:
    """Equal on worst-case and clean accuracy: one rank (1, 1, 3), listed by label; attacks likewise."""
    early, late = rows.version("red", "early", "attack"), rows.version("red", "late", "attack")
    zeta, alpha, third = (rows.version("blue", name, "defense") for name in ("zeta", "alpha", "third"))
    r = rows.round(1)
    for attack in (early, late):
        rows.match(r, attack, zeta, [1, 1, 0, 0])
        rows.match(r, attack, alpha, [1, 1, 0, 0])
        rows.match(r, attack, third, [1, 0, 0, 0])
    (board,) = standings(db, r)
    assert [(d.entry.plugin, d.rank) for d in board.defenses] == [("alpha", 1), ("zeta", 1), ("third", 3)]
    assert [(a.entry.plugin, a.rank) for a in board.attacks] == [("early", 1), ("late", 1)]
    assert board.as_dict()["defenses"][1]["rank"] == 1


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


def test_draws_and_l0_are_reported(db: Database, rows: Rows) -> None:
    attack, d = rows.version("r", "a", "attack"), rows.version("b", "magnet", "defense")
    r = rows.round(1)
    rows.match(r, attack, d, [1, 0], metrics={"draws": 5, "mean_l0": 3.0})
    (board,) = standings(db, r)
    assert board.defenses[0].draws == 5
    assert board.attacks[0].mean_l0 == 3.0


def test_decoded_outcomes_are_reused_from_the_cache(db: Database, rows: Rows) -> None:
    attack, d = rows.version("r", "a", "attack"), rows.version("b", "d", "defense")
    r = rows.round(1)
    key = rows.match(r, attack, d, [1, 0, 0, 1])
    cache = OutcomeCache()
    with db.session() as s:
        first = round_standings(s, r, outcomes=cache)
    assert len(cache) == 1
    with db.session() as s:  # the stored records are gone: only the cache can still answer
        s.execute(Result.__table__.update().where(Result.key == key).values(samples=None))
    with db.session() as s:
        assert round_standings(s, r, outcomes=cache) == first
    with pytest.raises(ValueError, match="no per-sample records"):
        standings(db, r)


def test_a_tiny_cache_forgets_its_oldest_outcomes(db: Database, rows: Rows) -> None:
    a1, a2, d = rows.version("r", "a1", "attack"), rows.version("r", "a2", "attack"), rows.version("b", "d", "defense")
    r = rows.round(1)
    rows.match(r, a1, d, [1, 0])
    rows.match(r, a2, d, [0, 1])
    cache = OutcomeCache(capacity=1)
    with db.session() as s:
        round_standings(s, r, outcomes=cache)
    assert len(cache) == 1


def test_the_round_token_changes_when_a_result_arrives(db: Database, rows: Rows) -> None:
    attack, d = rows.version("r", "a", "attack"), rows.version("b", "d", "defense")
    r = rows.round(1)
    key = rows.match(r, attack, d, status="pending")
    with db.session() as s:
        before = round_token(s, r)
        assert round_token(s, r) == before
    rows.result(key, [1, 1], attack_version_id=attack, defense_version_id=d, track="digits", threat="white-box")
    with db.session() as s:
        assert round_token(s, r) != before


def test_history_follows_scores_breaks_and_survival_over_rounds(db: Database, rows: Rows) -> None:
    a1 = rows.version("red", "a1", "attack")
    a2v1 = rows.version("green", "a2", "attack")
    d1v1, d2 = rows.version("blue", "d1", "defense"), rows.version("gold", "d2", "defense")
    r1 = rows.round(1, status="done")
    rows.match(r1, a1, d1v1, [1, 1, 1, 0])  # success 0.25: holds
    rows.match(r1, a1, d2, [0, 0, 1, 1])  # 0.5: broken (the threshold counts)
    rows.match(r1, a2v1, d1v1, [1, 1, 1, 1])
    rows.match(r1, a2v1, d2, [0, 0, 0, 1])  # 0.75: broken
    a2v2 = rows.version("green", "a2", "attack")  # a new version of a2 enters round 2
    r2 = rows.round(2, status="done")
    rows.cell(r2, a1, d1v1)  # reused from round 1
    rows.cell(r2, a1, d2)
    rows.match(r2, a2v2, d1v1, [0, 0, 0, 1])  # d1 falls in round 2
    rows.match(r2, a2v2, d2, [0, 0, 0, 0])
    d1v2 = rows.version("blue", "d1", "defense")  # blue answers with a new version
    r3 = rows.round(3)
    rows.match(r3, a1, d1v2, [1, 1, 1, 1])
    rows.match(r3, a2v2, d1v2, [1, 1, 1, 0])
    rows.cell(r3, a1, d2)
    rows.cell(r3, a2v2, d2)

    with db.session() as s:
        (board,) = history([(n, round_standings(s, r)) for n, r in ((1, r1), (2, r2), (3, r3))])
    assert (board.track, board.threat, board.rounds) == ("digits", "white-box", [1, 2, 3])
    defenses = {line.label: line.values for line in board.defenses}
    assert defenses == {"blue/d1": [0.75, 0.0, 0.75], "gold/d2": [0.25, 0.0, 0.0]}
    attacks = {line.label: line.values for line in board.attacks}
    assert attacks["green/a2"] == pytest.approx([0.375, 0.875, 0.625])
    events = [(e.round, e.attack.version_id, e.defense.version_id, e.success_rate) for e in board.breaks]
    assert events == [(2, a2v2, d1v1, 0.75), (1, a2v1, d2, 0.75), (1, a1, d2, 0.5)]
    survival = {s.defense.version_id: s for s in board.survival}
    assert [s.defense.version_id for s in board.survival] == [d1v2, d1v1, d2]
    assert survival[d1v2].standing and survival[d1v2].rounds_survived == 1 and survival[d1v2].first_round == 3
    assert (survival[d1v1].broken_in, survival[d1v1].rounds_survived, survival[d1v1].rounds_played) == (2, 1, 2)
    assert [e.version_id for e in survival[d1v1].broken_by] == [a2v2]
    assert (survival[d2].broken_in, survival[d2].rounds_survived) == (1, 0)
    assert (survival[d2].rounds_played, survival[d2].last_round) == (3, 3)  # broken in round 1, played on
    every = [(e.round, e.attack.version_id, e.defense.version_id, e.first) for e in board.every_break]
    assert every == [
        (3, a2v2, d2, False), (3, a1, d2, False), (2, a2v2, d2, False), (2, a2v2, d1v1, True), (2, a1, d2, False),
        (1, a2v1, d2, True), (1, a1, d2, True),
    ]  # fmt: skip
    assert {e.version_id for e in survival[d2].broken_by} == {a1, a2v1}
    assert board.as_dict()["survival"][0]["standing"] is True
    assert BREAK_SUCCESS_RATE == 0.5


def test_history_ignores_failed_and_pending_cells(db: Database, rows: Rows) -> None:
    a1, a2, d = rows.version("r", "a1", "attack"), rows.version("r", "a2", "attack"), rows.version("b", "d", "defense")
    r = rows.round(1)
    rows.match(r, a1, d, status="failed", error="crash")
    rows.match(r, a2, d, status="pending")
    with db.session() as s:
        (board,) = history([(1, round_standings(s, r))])
    assert board.breaks == [] and board.survival == []  # the defense has not played yet
    assert board.defenses[0].values == [None]
