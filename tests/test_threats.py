"""Threat models: what an attack can reach of the defense, and what the arena counts, through real matches."""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hostile import SPY, write_attack
from torch import nn

from arena import ThreatModelError
from arena.contract import plugins
from arena.contract.plugins import PluginSource
from arena.play import hosts, training
from arena.play.match import MatchOutcome, MatchSpec, Warm, attack_view, play
from arena.play.threats import ArenaTarget, QueryServer
from arena.play.training import TrainSpec
from arena.rules import evaluation, physical
from arena.rules.tracks import TRACKS, Track
from arena.sandbox import wire
from arena.store.records import unpack

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"

#: a small digits track: one epoch of training, 60 samples in two batches of 30, 5 queries per sample
TRACK = dataclasses.replace(
    TRACKS["digits"], name="digits-test", epochs=1, eval_size=60, batch_size=30, max_queries=5, time_limit=120.0
)
SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class Fingerprint:
    """The shape and sum of a model's first parameter: enough to recognise it anywhere."""

    shape: tuple[int, ...]
    total: float

    @classmethod
    def of(cls, artifact: bytes) -> Fingerprint:
        """The fingerprint of a saved model."""
        model = torch.load(io.BytesIO(artifact), map_location="cpu", weights_only=False)
        first = next(model.parameters()).detach()
        return cls(tuple(first.shape), float(first.double().sum()))

    def params(self) -> dict[str, object]:
        """As manifest ``[params]`` for the spy."""
        return {"shape": list(self.shape), "total": self.total}


@dataclass(frozen=True)
class Arena:
    """A defended model, its twin and the substitute, trained once for this module."""

    data_dir: Path
    cache_dir: Path
    plugins_dir: Path
    defense: PluginSource
    defense_artifact: bytes
    twin_artifact: bytes
    substitute_artifact: bytes

    def spec(self, attack: Path, threat: str, track: Track = TRACK, seed: int = 0) -> MatchSpec:
        """A match of the attack plugin in folder ``attack`` against the undefended baseline."""
        source = plugins.read_folder(attack)
        assert not source.errors, source.errors
        return MatchSpec(
            attack=source,
            defense=self.defense,
            track=track,
            threat=threat,
            seed=seed,
            defense_artifact=self.defense_artifact,
            twin_artifact=self.twin_artifact,
            substitute_artifact=self.substitute_artifact,
            evaluation=evaluation.build(track, self.data_dir, b"test").pack(track.levels),
            data_dir=self.data_dir,
            cache_dir=self.cache_dir,
        )

    def play(
        self, name: str, body: str, threat: str = "black-box", track: Track = TRACK, warm: Warm | None = None, **kw: Any
    ) -> MatchOutcome:
        """Write the attack ``name`` (see :func:`hostile.write_attack`) and play it under ``threat`` (in ``warm``)."""
        folder = write_attack(self.plugins_dir, name, body, threats=(threat,), **kw)
        return play(self.spec(folder, threat, track), warm)


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Arena:
    """Train the undefended baseline (secret seed 1), its twin (seed 2) and the substitute, once."""
    root = tmp_path_factory.mktemp("arena")
    data_dir, cache_dir = root / "data", root / "cache"
    defense = plugins.read_folder(PLUGINS / "defenses" / "undefended")
    defended, _ = training.train_defense(TrainSpec(defense, TRACK, 1, data_dir, cache_dir))
    twin, _ = training.train_defense(TrainSpec(defense, TRACK, 2, data_dir, cache_dir))
    substitute, _ = training.train_substitute(TRACK, data_dir)
    return Arena(data_dir, cache_dir, root / "plugins", defense, defended, twin, substitute)


def fine_match(arena: Arena, threat: str = "black-box", warm: Warm | None = None) -> None:
    """A well-behaved attack still plays (and is judged) after whatever came before."""
    outcome = arena.play(f"fine-{threat}", "return (x + 0.05).clamp(0, 1)", threat=threat, warm=warm)
    assert outcome.status == "ok", outcome.error
    assert outcome.metrics["n"] == TRACK.eval_size and outcome.samples is not None


# --------------------------------------------------------------------------------------------------
# The query server (the arena's side of target.query)
# --------------------------------------------------------------------------------------------------


def server() -> QueryServer:
    """A query server over a small linear model of the digits' shape."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def answer(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()

    return QueryServer(answer, SHAPE, 17)


def images(k: int) -> np.ndarray:
    """``k`` random digits-shaped images, as they cross the pipe."""
    return np.random.default_rng(k).random((k, *SHAPE), dtype=np.float32)


def test_query_server_answers_probabilities_and_counts_images() -> None:
    answer = server()
    answer.allow(10)
    probs, used, left = answer(images(4))
    assert (used, left) == (4, 6)
    assert probs.shape == (4, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and (probs >= 0).all()
    assert answer(images(6))[1:] == (10, 0)
    assert answer.used == answer.total == 10


def test_query_server_refuses_beyond_the_allowance_and_counts_nothing_refused() -> None:
    answer = server()
    answer.allow(10)
    answer(images(7))
    refused = answer(images(4))
    assert refused.reason == "budget" and "7 of 10" in refused.text
    assert answer.used == answer.total == 7
    assert isinstance(answer(images(3)), wire.QueryAnswer)  # exactly the allowance is fine
    assert answer(images(1)).reason == "budget"
    assert answer.total == 10


def test_query_server_allowance_resets_per_call_but_the_total_does_not() -> None:
    answer = server()
    answer.allow(5)
    answer(images(5))
    answer.allow(5)
    assert answer.used == 0
    assert answer(images(5))[1:] == (5, 0)
    assert answer.total == 10
    answer.allow(0)
    assert answer(images(1)).reason == "budget"


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(images(2).astype(np.float64), id="float64"),
        pytest.param(images(2).astype(np.int64), id="int"),
        pytest.param(images(2)[0], id="one-image-without-batch"),
        pytest.param(images(2).reshape(2, 1, 4, 16), id="wrong-shape"),
        pytest.param(np.full((2, *SHAPE), np.nan, dtype=np.float32), id="nan"),
        pytest.param(np.full((2, *SHAPE), np.inf, dtype=np.float32), id="inf"),
        pytest.param(images(2).tolist(), id="list"),
        pytest.param(torch.zeros(2, *SHAPE), id="tensor"),
        pytest.param("images", id="str"),
    ],
)
def test_query_server_refuses_malformed_queries(query: object) -> None:
    answer = server()
    answer.allow(100)
    refused = answer(query)
    assert isinstance(refused, wire.QueryRefused) and refused.reason == "value" and "query" in refused.text
    assert answer.used == answer.total == 0


def test_a_black_box_target_holds_no_model_and_says_so() -> None:
    substitute = nn.Linear(1, 1)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="never holds the defended model"):
        ArenaTarget("black-box", None, nn.Linear(1, 1), substitute, 10, SHAPE, cpu)  # type: ignore[arg-type]
    target = ArenaTarget("black-box", None, None, substitute, 10, SHAPE, cpu)  # type: ignore[arg-type]
    with pytest.raises(ThreatModelError, match=r"black-box: the defended model is not available; use target\.query"):
        _ = target.model
    assert target.substitute is substitute
    with pytest.raises(TypeError, match="expects a torch.Tensor"):
        target.query(np.zeros((1, *SHAPE), dtype=np.float32))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Isolation, end to end: a spy looks everywhere in the attack's process for the defended model
# --------------------------------------------------------------------------------------------------

SPY_RUN = "spy(target, self.shape, self.total, modules=self.modules)\nreturn x"


def test_arena_models_differ(arena: Arena) -> None:
    """The fingerprints tell the defended model, its twin and the substitute apart."""
    defended, twin = Fingerprint.of(arena.defense_artifact), Fingerprint.of(arena.twin_artifact)
    assert defended.shape == twin.shape == (32, 1, 3, 3)
    assert not math.isclose(defended.total, twin.total, abs_tol=1e-3)
    assert Fingerprint.of(arena.substitute_artifact).shape != defended.shape


def test_the_attack_process_receives_only_what_its_threat_allows(arena: Arena) -> None:
    folder = write_attack(arena.plugins_dir, "viewer", "return x")
    white, gray, black = (attack_view(arena.spec(folder, t)) for t in ("white-box", "gray-box", "black-box"))
    assert white.defense_artifact == arena.defense_artifact and white.twin_artifact is None
    assert gray.twin_artifact == arena.twin_artifact and not gray.defense_artifact
    assert gray.defense.files == arena.defense.files  # the twin needs the defense's code to load
    assert not black.defense_artifact and black.twin_artifact is None and not black.defense.files
    assert {v.substitute_artifact for v in (white, gray, black)} == {arena.substitute_artifact}


def test_white_box_spy_finds_the_defended_model(arena: Arena) -> None:
    """The control experiment: the same spy does find the model where the threat model hands it over."""
    params = Fingerprint.of(arena.defense_artifact).params() | {"modules": True}
    outcome = arena.play("spy-white", SPY_RUN, threat="white-box", params=params, helpers=SPY)
    assert outcome.status == "failed"
    assert "FOUND" in (outcome.error or "")
    assert "module ReferenceCNN" in (outcome.error or "") and "parameter" in (outcome.error or "")


def test_black_box_attack_cannot_reach_the_defended_model(arena: Arena) -> None:
    """No module but the substitute, no parameter, no artifact bytes of the defended model in the attack's process."""
    params = Fingerprint.of(arena.defense_artifact).params() | {"modules": True}
    outcome = arena.play("spy-black", SPY_RUN, params=params, helpers=SPY)
    assert outcome.status == "ok", outcome.error
    assert "spy:" in outcome.log_tail and "found []" in outcome.log_tail


def test_gray_box_model_is_the_twin_and_the_defended_model_is_out_of_reach(arena: Arena) -> None:
    defended, twin = Fingerprint.of(arena.defense_artifact), Fingerprint.of(arena.twin_artifact)
    body = """
    first = next(target.model.parameters())
    if not _matches(first, self.twin_shape, self.twin_total):
        raise RuntimeError(f"target.model is not the twin: sum {float(first.double().sum())}")
    spy(target, self.shape, self.total, modules=False)
    return x
    """
    params = defended.params() | {"modules": False, "twin_shape": list(twin.shape), "twin_total": twin.total}
    outcome = arena.play("spy-gray", body, threat="gray-box", params=params, helpers=SPY)
    assert outcome.status == "ok", outcome.error
    assert "found []" in outcome.log_tail


def test_black_box_model_access_fails_the_match_with_a_threat_model_error(arena: Arena) -> None:
    outcome = arena.play("peek", "return target.model(x)")
    assert outcome.status == "failed"
    assert "ThreatModelError" in (outcome.error or "") and "not available" in (outcome.error or "")
    assert "hostile/peek" in (outcome.error or "")


# --------------------------------------------------------------------------------------------------
# The query budget, counted by the arena
# --------------------------------------------------------------------------------------------------

BUDGET_RUN = """
for bad in (torch.zeros(2, 3), torch.full_like(x[:2], float("nan"))):
    try:
        target.query(bad)
        raise RuntimeError("a malformed query was answered")
    except ValueError:
        pass
answered, refusals = 0, []
for chunk in (7, 1):
    while True:
        try:
            probs = target.query(x[:chunk])
        except QueryBudgetExceeded as exc:
            refusals.append(str(exc))
            break
        assert probs.shape == (chunk, 10)
        answered += chunk
allowance = len(x) * budget.max_queries
print(f"BUDGET answered={answered} used={target.queries_used} left={target.queries_left}", flush=True)
if answered != allowance or target.queries_used != allowance or target.queries_left != 0:
    raise RuntimeError(f"answered {answered}, used {target.queries_used}, allowance {allowance}")
if not all("budget" in refusal for refusal in refusals):
    raise RuntimeError(f"refusals do not say budget: {refusals}")
return x
"""


def test_queries_beyond_the_budget_are_refused_and_the_arena_counts_what_it_answered(arena: Arena) -> None:
    outcome = arena.play("greedy", BUDGET_RUN)
    assert outcome.status == "ok", outcome.error
    per_batch = TRACK.batch_size * TRACK.max_queries
    assert outcome.log_tail.count(f"BUDGET answered={per_batch} used={per_batch} left=0") == 2
    assert outcome.metrics["queries"] == TRACK.eval_size * TRACK.max_queries
    assert outcome.metrics["queries_per_sample"] == TRACK.max_queries


def test_an_attack_that_ignores_its_budget_fails_its_match(arena: Arena) -> None:
    outcome = arena.play("reckless", "while True:\n    target.query(x)")
    assert outcome.status == "failed"
    assert "QueryBudgetExceeded" in (outcome.error or "") and "budget" in (outcome.error or "")
    fine_match(arena)


# --------------------------------------------------------------------------------------------------
# Malformed outputs, crashes and time-outs fail only their own match
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        pytest.param("return x[:, :, :4]", "shape (30, 1, 4, 8), expected (30, 1, 8, 8)", id="wrong-shape"),
        pytest.param("return (x * 255).to(torch.int64)", "dtype torch.int64", id="int-dtype"),
        pytest.param("return torch.full_like(x, float('nan'))", "NaN or infinite values in 30 samples", id="nan"),
        pytest.param("return x.numpy()", "returned ndarray, not a torch.Tensor", id="not-a-tensor"),
        pytest.param("return None", "returned NoneType, not a torch.Tensor", id="none"),
        pytest.param("raise ZeroDivisionError('no luck')", "ZeroDivisionError: no luck", id="exception"),
        pytest.param("os._exit(7)", "exited with status 7", id="exit"),
    ],
)
def test_a_misbehaving_attack_fails_only_its_own_match(arena: Arena, body: str, cause: str) -> None:
    outcome = arena.play("misbehave", f"print('about to misbehave', flush=True)\n{body}")
    assert outcome.status == "failed"
    assert cause in (outcome.error or ""), outcome.error
    assert "about to misbehave" in outcome.log_tail
    fine_match(arena)


def test_an_exception_names_the_plugins_line(arena: Arena) -> None:
    outcome = arena.play("oops", "values = [1, 2]\nreturn values[5]")
    assert outcome.status == "failed"
    assert "IndexError: list index out of range (at oops.py:" in (outcome.error or "")
    assert "in run)" in (outcome.error or "")


def test_a_slow_attack_times_out_and_fails_only_its_own_match(arena: Arena) -> None:
    quick = dataclasses.replace(TRACK, time_limit=3.0)
    outcome = arena.play("sleepy", "time.sleep(60)\nreturn x", track=quick)
    assert outcome.status == "failed"
    assert "time-out: exceeded the limit of 3 s" in (outcome.error or "")
    assert outcome.wall_time < 15
    fine_match(arena)


# --------------------------------------------------------------------------------------------------
# What the referee judges: mixed batches; the clean verdict alone serves the diagnostics, computed once
# --------------------------------------------------------------------------------------------------


def test_two_hosts_judge_a_match_each_a_secret_mix_and_the_records_match_the_clean_reference(
    arena: Arena, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = arena.spec(PLUGINS / "attacks" / "fgsm", "white-box")
    warm = Warm()
    first = play(spec, warm)
    judged: list[np.ndarray] = []
    classify = hosts._classify_in

    def spy(box, host, x, draws, probe):  # noqa: ANN001, ANN202
        judged.append(x.numpy().copy())
        return classify(box, host, x, draws, probe)

    monkeypatch.setattr(hosts, "_classify_in", spy)
    second, gray = play(spec, warm), play(arena.spec(PLUGINS / "attacks" / "fgsm", "gray-box"), warm)
    warm.close()
    assert len(judged) == 4, "two mixed hosts a match; the reference verdict is kept"
    assert first.status == second.status == gray.status == "ok"
    evaluation_set = evaluation.EvalSet.unpack(spec.evaluation)
    clean = {tuple(image.flatten()) for image in evaluation_set.x.numpy()}
    for batch in judged[:2]:
        assert len(batch) == TRACK.eval_size, "half of the samples clean, the other half adversarial"
        from_clean = sum(tuple(image.flatten()) in clean for image in batch)
        assert 0 < from_clean < len(batch), "each host judges clean and adversarial images together"
    before, after = unpack(first.samples), unpack(second.samples)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert first.metrics["input_gradient"] == second.metrics["input_gradient"]
    assert first.metrics["company_changes"] == second.metrics["company_changes"] == 0.0
    assert "input_gradient" not in gray.metrics, "the measure belongs to white-box matches"


def test_a_randomized_defense_is_judged_over_its_draws_in_the_mixed_hosts(arena: Arena) -> None:
    spec = dataclasses.replace(arena.spec(PLUGINS / "attacks" / "fgsm", "white-box"), randomized=True)
    outcome = play(spec)
    assert outcome.status == "ok" and outcome.metrics["draws"] == TRACK.draws
    assert "clean_disagreement" in outcome.metrics and "company_changes" not in outcome.metrics


def test_a_warm_attack_process_plays_every_match_as_a_fresh_one_would(arena: Arena) -> None:
    fgsm = PLUGINS / "attacks" / "fgsm"
    specs = [arena.spec(fgsm, "white-box", seed=0), arena.spec(fgsm, "gray-box", seed=1)]
    specs += [arena.spec(fgsm, "white-box", seed=2), arena.spec(fgsm, "gray-box", seed=3)]
    cold = [play(spec) for spec in specs]
    with Warm() as kept:
        warm = [play(spec, kept) for spec in specs]
        assert len(kept.attacks._boxes) == 2, "one process per threat"
    for before, after in zip(cold, warm, strict=True):
        assert before.status == after.status == "ok"
        a, b = unpack(before.samples), unpack(after.samples)
        assert all(np.array_equal(a[k], b[k]) for k in a), "the same records, sample by sample"


COUNTED = """
CALLS[0] += 1
print(f"call {CALLS[0]}", flush=True)
if CALLS[0] == 5:
    os._exit(3)
time.sleep(1.2)
return x.clone()
"""


def test_a_warm_process_gives_each_match_its_own_clock_and_log_and_a_crash_fails_only_its_match(
    arena: Arena,
) -> None:
    """Two batches a match: matches 1 and 2 (2.4 s each, 4 s allowed) share a process, match 3 crashes it,
    match 4 starts a fresh one."""
    track = dataclasses.replace(TRACK, time_limit=4.0)
    folder = write_attack(arena.plugins_dir, "counted", COUNTED, threats=("black-box",), helpers="CALLS = [0]")
    with Warm() as warm:
        outcomes = [play(arena.spec(folder, "black-box", track, seed=seed), warm) for seed in range(4)]
    assert [o.status for o in outcomes] == ["ok", "ok", "failed", "ok"], [o.error for o in outcomes]
    assert "exit" in (outcomes[2].error or "") and "status 3" in (outcomes[2].error or "")
    assert "call 1" in outcomes[0].log_tail and "call 3" not in outcomes[0].log_tail
    assert "call 3" in outcomes[1].log_tail and "call 2" not in outcomes[1].log_tail
    assert "call 1" in outcomes[3].log_tail, "a fresh process after the crash"


def test_a_warm_process_serves_the_matches_of_one_round_only(arena: Arena) -> None:
    """What an attack learns in a round (a black-box attack: the answers of the defenses it queried) never
    reaches the next round, where a new version of a defense may play."""
    body = 'CALLS[0] += 1\nprint(f"call {CALLS[0]}", flush=True)\nreturn x.clone()'
    folder = write_attack(arena.plugins_dir, "remembers", body, threats=("black-box",), helpers="CALLS = [0]")
    with Warm() as warm:
        first, same_round, next_round = (
            play(arena.spec(folder, "black-box", seed=seed), warm, scope=round_id)
            for seed, round_id in ((0, 1), (1, 1), (0, 2))
        )
    assert "call 3" in same_round.log_tail, "the same round's process, warm"
    assert "call 1" in next_round.log_tail and "call 3" not in next_round.log_tail, "a fresh process"
    assert first.status == same_round.status == next_round.status == "ok"


# --------------------------------------------------------------------------------------------------
# A physical track: what the defense sees is printed and photographed (arena/rules/physical.py)
# --------------------------------------------------------------------------------------------------

PHYSICAL = dataclasses.replace(TRACK, name="digits-physical-test", transform="print-photo", photo={"blur": 0.6})


def test_a_physical_track_judges_photographs_and_hands_the_attack_the_published_ranges(arena: Arena) -> None:
    body = """
    print("ranges", budget.photo)
    return x
    """
    outcome = arena.play("photo-aware", body, threat="white-box", track=PHYSICAL)
    assert outcome.status == "ok", outcome.error
    assert "ranges PrintAndPhoto(rotate=4.0" in outcome.log_tail and "blur=0.6" in outcome.log_tail
    shown = unpack(outcome.gallery)
    evaluation_set = evaluation.EvalSet.unpack(
        arena.spec(PLUGINS / "attacks" / "fgsm", "white-box", PHYSICAL).evaluation
    )
    digital = (evaluation_set.x[shown["position"]] * 255).round().to(torch.uint8).numpy()
    assert not np.array_equal(shown["clean"], digital)  # the gallery shows what the defense saw: photographs
    assert np.array_equal(shown["clean"], shown["adversarial"])  # an unchanged image, photographed under one draw
    digital_outcome = arena.play("photo-aware-digital", body, threat="white-box")
    assert "ranges None" in digital_outcome.log_tail


def test_a_physical_tracks_queries_reach_the_defense_photographed_each_under_a_fresh_draw() -> None:
    seen: list[np.ndarray] = []

    def answer(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return np.full((len(x), 10), 0.1, dtype=np.float32)

    ranges = PHYSICAL.photo_ranges
    draws = itertools.count()

    def look(x: torch.Tensor) -> torch.Tensor:
        return physical.photograph(x, next(draws), ranges, 17)

    query = QueryServer(answer, SHAPE, 17, look)
    query.allow(4)
    batch = images(2)
    assert isinstance(query(batch), wire.QueryAnswer) and isinstance(query(batch), wire.QueryAnswer)
    assert not np.array_equal(seen[0], batch) and not np.array_equal(seen[0], seen[1])
    assert np.array_equal(seen[0] * 16, np.round(seen[0] * 16))  # on the track's grid


def test_on_a_gpu_worker_every_host_of_a_match_runs_where_it_was_decided_before_the_match(
    arena: Arena, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A throwaway host times the model on the CPU first, its answer discarded; then the clean and the adversarial
    host run on the same device. Had the first real host been timed, a defense slow on purpose would have known
    its clean host by the CPU and its adversarial one by the GPU (and rejected everything there)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the arena's process believes it has a GPU
    monkeypatch.setattr(hosts, "CUDA_START_SECONDS", 0.0)  # and that every model is faster there
    asked: list[str] = []
    start = hosts.Host.sandbox

    def on_the_cpu_all_the_same(host: hosts.Host):  # noqa: ANN202 (there is no GPU here to run on)
        asked.append(host.device)
        return start(dataclasses.replace(host, device="cpu"))

    monkeypatch.setattr(hosts.Host, "sandbox", on_the_cpu_all_the_same)
    warm = Warm()
    fine_match(arena, warm=warm)
    assert asked == ["cpu", "cuda", "cuda", "cuda"], "the probe, the clean reference, then the two judging hosts"
    fine_match(arena, warm=warm)
    assert asked[4:] == ["cuda", "cuda"], "no probe for a model timed already (and its clean reference is kept)"
