"""Planning as a pure function (arena/plan/planning.py): what a round needs, decided from what is stored."""

from __future__ import annotations

import dataclasses

from arena.plan.keys import artifact_key, attempt_key, evaluation_key, result_key
from arena.plan.planning import Latest, Pairing, Stored, decide, pairings
from arena.rules.tracks import TRACKS
from arena.store import Plugin, PluginVersion, Team

TRACK = TRACKS["digits"]
NOTHING = Stored(frozenset(), frozenset(), frozenset(), frozenset(), frozenset(), {})


def version(id_: int, kind: str, threats: tuple[str, ...] = ()) -> PluginVersion:
    """A plugin version, never stored: planning reads only its id, hash, declarations and names."""
    declared = {"norms": [TRACK.norm], "threats": list(threats)} if kind == "attack" else {}
    plugin = Plugin(name=f"{kind}-{id_}", kind=kind, team=Team(name="team"))
    return PluginVersion(id=id_, content_hash=f"{id_:064x}", manifest={"declared": declared}, plugin=plugin)


def planned() -> list[Pairing]:
    attacks = [version(1, "attack", ("white-box", "gray-box"))]
    return pairings(attacks, [version(2, "defense")], [TRACK], 0, {TRACK.name: "evaluation-key"}, "fingerprint")


def test_a_round_with_nothing_stored_needs_every_training_and_every_match() -> None:
    plan = decide(NOTHING, planned(), seed=0, round_id=7, retry_failed=False)
    kinds = [job.kind for job in plan.jobs]
    assert kinds == ["train-substitute", "train-defense", "match", "train-twin", "match"]
    assert plan.cells == 2 and plan.cached == 0 and plan.round_id == 7
    twin_match = plan.jobs[-1]
    assert twin_match.depends[-1] == plan.jobs[3].key and "evaluation-key" in twin_match.depends
    assert plan.summary()[0].startswith("2 match: new attack version team/attack-1@")


def test_deciding_is_pure_and_a_round_whose_outputs_exist_needs_nothing() -> None:
    first = decide(NOTHING, planned(), 0, None, False)
    assert decide(NOTHING, planned(), 0, None, False) == first, "the same plan from the same inputs"
    artifacts = frozenset(job.key for job in first.jobs if job.kind != "match")
    latest = {cell.result_key: Latest(cell.result_key, 0, "ok", None) for cell in first.matrix}
    stored = dataclasses.replace(NOTHING, artifacts=artifacts, latest=latest, played=frozenset({1, 2}))
    again = decide(stored, planned(), 0, None, False)
    assert again.jobs == [] and again.cached == again.cells == 2
    assert [cell.result_key for cell in again.matrix] == [cell.result_key for cell in first.matrix]


def test_a_match_that_lacked_an_input_is_replayed_as_its_next_attempt() -> None:
    content = planned()[0].matches[0][1]
    model = planned()[0].model
    failed = Latest(content, 0, "failed", [model])
    stored = dataclasses.replace(NOTHING, latest={content: failed}, failed=frozenset({model}))
    plan = decide(stored, planned(), 0, None, False)
    match = next(job for job in plan.jobs if job.kind == "match")
    assert match.key == attempt_key(content, 1) and match.params["attempt"] == 1
    assert match.cause == "replay: its defense's training failed before" and plan.replayed == 1
    training = next(job for job in plan.jobs if job.kind == "train-defense")
    assert training.cause.startswith("replay: the training of team/defense-2@")


def test_a_track_that_differs_only_in_its_evaluation_shares_its_trained_models() -> None:
    """The demo's fewer images, or a new floor, reuse the models; what training reads retrains them."""
    fewer = dataclasses.replace(TRACK, eval_size=100, clean_floor=0.5, max_queries=10, draws=2, inference_ms=9.0)
    for kind in ("defense", "twin", "substitute"):
        assert artifact_key(kind, fewer, "fp", "d" * 64) == artifact_key(kind, TRACK, "fp", "d" * 64)
        for training in ({"eps": TRACK.eps / 2}, {"epochs": TRACK.epochs + 1}, {"levels": 256}):
            other = dataclasses.replace(TRACK, **training)
            assert artifact_key(kind, other, "fp", "d" * 64) != artifact_key(kind, TRACK, "fp", "d" * 64), training
    assert evaluation_key(fewer, "fp") != evaluation_key(TRACK, "fp")
    assert result_key("a", "d", fewer, "white-box", 0, "e") != result_key("a", "d", TRACK, "white-box", 0, "e")


def test_a_new_clean_floor_keeps_the_evaluation_set_and_the_results() -> None:
    """Only scoring reads the floor: a new one ranks the results again; what a match reads plays them again."""
    floor = dataclasses.replace(TRACK, clean_floor=TRACK.clean_floor - 0.01)
    assert evaluation_key(floor, "fp") == evaluation_key(TRACK, "fp")
    assert result_key("a", "d", floor, "white-box", 0, "e") == result_key("a", "d", TRACK, "white-box", 0, "e")
    for played in ({"eval_size": TRACK.eval_size - 1}, {"draws": TRACK.draws + 1}, {"max_queries": 7}):
        other = dataclasses.replace(TRACK, **played)
        assert result_key("a", "d", other, "white-box", 0, "e") != result_key("a", "d", TRACK, "white-box", 0, "e")
