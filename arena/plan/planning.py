"""What a round needs, decided from what is stored: a pure function (:func:`decide`) returning a value
(:class:`Plan`). :mod:`arena.plan.planner` reads what is stored and writes the plan.

Each attack meets each defense on each track whose norm it plays (:func:`pairings`), under each threat it plays.
A job is planned only when its output (an artifact or a result, keyed by content: :mod:`arena.plan.keys`) does not
exist and no job makes it already.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import product

from arena.plan.keys import artifact_key, attempt_key, result_key
from arena.rules.referee import REFEREE_VERSION
from arena.rules.tracks import Track
from arena.store import PluginVersion


@dataclass(frozen=True)
class NewJob:
    """A job a round needs: its kind, key, parameters and inputs (artifact keys), what it makes (``why``) and
    what changed to need it (``cause``)."""

    kind: str
    key: str
    params: dict
    depends: list[str]
    why: str
    cause: str


@dataclass(frozen=True)
class MatrixCell:
    """A cell of a round's matrix: the result (by key) it shows for an attack, a defense, a track and a threat."""

    result_key: str
    attack_version_id: int
    defense_version_id: int
    track: str
    threat: str


@dataclass(frozen=True)
class Latest:
    """The latest attempt at a match: its result's key, number, status and the inputs it lacked."""

    key: str
    attempt: int
    status: str
    missing_inputs: list[str] | None


@dataclass(frozen=True)
class Stored:
    """What planning reads from the database (:func:`read_stored`): keys of unfinished jobs (``pending``) and of
    failed trainings, versions that played or trained, the artifacts stored, and each match's latest attempt."""

    pending: frozenset[str]
    failed: frozenset[str]
    played: frozenset[int]
    trained: frozenset[int]
    artifacts: frozenset[str]
    latest: Mapping[str, Latest]


@dataclass(frozen=True)
class Candidate:
    """A cell of the matrix before planning decides it: its plugins, track and threat, its match's content key and
    the artifacts it needs (key -> what makes it)."""

    track: Track
    attack: PluginVersion
    defense: PluginVersion
    threat: str
    content_key: str
    inputs: dict[str, str]


@dataclass
class Plan:
    """What planning decided: the new jobs and the round's matrix, and how many cells were reused or replayed.

    ``reasons`` names each new job; ``causes`` counts them by (kind, cause), the cause being what
    changed: a new attack or defense version, a track, a pair that never met under these rules, or
    a replay of what failed before (see :func:`decide`).
    """

    round_id: int | None
    jobs: list[NewJob] = field(default_factory=list)
    matrix: list[MatrixCell] = field(default_factory=list)
    cached: int = 0
    replayed: int = 0

    @property
    def cells(self) -> int:
        """The matrix's cells."""
        return len(self.matrix)

    @property
    def new_jobs(self) -> Counter[str]:
        """New jobs by kind."""
        return Counter(job.kind for job in self.jobs)

    @property
    def reasons(self) -> list[str]:
        """What each new job makes."""
        return [job.why for job in self.jobs]

    @property
    def causes(self) -> Counter[tuple[str, str]]:
        """New jobs by kind and cause."""
        return Counter((job.kind, job.cause) for job in self.jobs)

    def summary(self) -> list[str]:
        """One line per cause, the most jobs first: ``12 match: new attack version students/pgd@1a2b3c4d``."""
        return [f"{count} {kind}: {cause}" for (kind, cause), count in self.causes.most_common()]

    def cells_line(self) -> str:
        """``161 matches, 147 reused from earlier results`` (and ``, 2 replayed`` when some failed before)."""
        replayed = f", {self.replayed} replayed" if self.replayed else ""
        return f"{self.cells} matches, {self.cached} reused from earlier results{replayed}"


@dataclass(frozen=True)
class Pairing:
    """An attack against a defense on a track (the attack plays the track's norm): the keys of the models it
    needs, of the track's evaluation set, and its matches' content keys by threat."""

    track: Track
    attack: PluginVersion
    defense: PluginVersion
    substitute: str
    model: str
    twin: str
    evaluation: str
    matches: tuple[tuple[str, str], ...]


def pairings(
    attacks: list[PluginVersion],
    defenses: list[PluginVersion],
    tracks: list[Track],
    seed: int,
    evaluations: Mapping[str, str],
    fingerprint: str,
) -> list[Pairing]:
    """Every attack against every defense on ``tracks``, in the order the round's jobs run (track, attack, defense),
    each under the threats the attack plays; ``evaluations`` are the tracks' evaluation set keys."""
    found = []
    for track, attack, defense in product(tracks, attacks, defenses):
        declared = attack.manifest.get("declared", {})
        if track.norm not in declared.get("norms", ()):
            continue
        hashes, key = (attack.content_hash, defense.content_hash), evaluations[track.name]
        matches = tuple(
            (threat, result_key(*hashes, track, threat, seed, key)) for threat in declared.get("threats", ())
        )
        models = [artifact_key(kind, track, fingerprint, defense.content_hash) for kind in ("defense", "twin")]
        substitute = artifact_key("substitute", track, fingerprint)
        found.append(Pairing(track, attack, defense, substitute, *models, key, matches))
    return found


def decide(stored: Stored, planned: list[Pairing], seed: int, round_id: int | None, retry_failed: bool) -> Plan:
    """The plan of ``planned`` given what is ``stored``: a pure function (nothing is read or written).

    A cell reuses the latest attempt at its match (:func:`arena.plan.keys.attempt_key`) unless that attempt failed
    and either never ran, for want of an input (a failed training leaves no artifact, so it is planned again,
    and the match with it), or ``retry_failed`` asks for it: then the cell is a new attempt under a key of its
    own, and the rounds that showed the failure keep showing it.
    """
    plan, pending = Plan(round_id), set(stored.pending)
    for p in planned:
        track, label = p.track, _label(p.defense)
        why = f"substitute for {track.name}"
        substitute = NewJob("train-substitute", p.substitute, {"track": track.name}, [], why, track.name)
        _add(plan, pending, stored, substitute, p.substitute in stored.artifacts)
        fresh = f"track {track.name} for {label}" if p.defense.id in stored.trained else f"new defense version {label}"
        params = {"track": track.name, "defense": p.defense.id}
        training = NewJob("train-defense", p.model, params, [], f"training of {label}", fresh)
        _add(plan, pending, stored, training, p.model in stored.artifacts)
        for threat, content in p.matches:
            inputs = {p.model: "its defense's training", p.substitute: "the substitute's training"}
            inputs[p.evaluation] = "the evaluation set"
            if threat == "gray-box":
                twin = NewJob("train-twin", p.twin, dict(params), [], f"twin of {label}", fresh)
                _add(plan, pending, stored, twin, p.twin in stored.artifacts)
                inputs[p.twin] = "its twin's training"
            _decide_cell(plan, pending, stored, p, threat, content, inputs, seed, retry_failed)
    return plan


def _decide_cell(
    plan: Plan,
    pending: set[str],
    stored: Stored,
    p: Pairing,
    threat: str,
    content: str,
    inputs: dict[str, str],
    seed: int,
    retry_failed: bool,
) -> None:
    """One cell of the matrix: the attempt it shows, and the match's job when that attempt is still to play."""
    latest = stored.latest.get(content)
    key, attempt, replay = _attempt(latest, content, inputs, pending, retry_failed)
    track, attack, defense = p.track.name, p.attack, p.defense
    plan.matrix.append(MatrixCell(key, attack.id, defense.id, track, threat))
    if replay:
        cause = replay
    elif attack.id not in stored.played:
        cause = f"new attack version {_label(attack)}"
    elif defense.id not in stored.played:
        cause = f"new defense version {_label(defense)}"
    else:
        cause = f"pairs not yet played on {track} with seed {seed} and referee {REFEREE_VERSION}"
    params = {"track": track, "threat": threat, "seed": seed, "attack": attack.id, "defense": defense.id}
    if attempt:
        params |= {"content_key": content, "attempt": attempt}
    why = f"{_label(attack)} vs {_label(defense)} on {track}, {threat}"
    match = NewJob("match", key, params, list(inputs), why, cause)
    added = _add(plan, pending, stored, match, latest is not None and latest.key == key)
    plan.cached += not added
    plan.replayed += bool(added and replay)


def _add(plan: Plan, pending: set[str], stored: Stored, job: NewJob, exists: bool) -> bool:
    """Add ``job`` to ``plan`` unless its output ``exists`` or it is pending already; whether it was added."""
    if job.key in pending or exists:
        return False
    if job.key in stored.failed:
        job = replace(job, cause=f"replay: the {job.why} failed before")
    plan.jobs.append(job)
    pending.add(job.key)
    return True


def _attempt(
    latest: Latest | None, content_key: str, inputs: dict[str, str], pending: set[str], retry_failed: bool
) -> tuple[str, int, str | None]:
    """The attempt a cell shows: its key, its number, and why it replays a failed one (None: no replay).

    That is the ``latest`` attempt, or the next one when a replay is under way (another round's) or is due:
    the latest failed for want of inputs (named by ``inputs``: artifact key -> what makes it), or at all
    with ``retry_failed``.
    """
    if latest is None:
        return content_key, 0, None
    following = latest.attempt + 1
    if attempt_key(content_key, following) in pending:
        return attempt_key(content_key, following), following, None
    if latest.status != "failed":
        return latest.key, latest.attempt, None
    if latest.missing_inputs is not None:
        names = [inputs[key] for key in inputs if key in latest.missing_inputs] or ["an input"]
        return attempt_key(content_key, following), following, f"replay: {' and '.join(names)} failed before"
    if retry_failed:
        return attempt_key(content_key, following), following, "replay: it failed before (retry requested)"
    return latest.key, latest.attempt, None


def _label(version: PluginVersion) -> str:
    return f"{version.plugin.team.name}/{version.plugin.name}@{version.content_hash[:8]}"
