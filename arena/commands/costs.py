"""What a run of queued jobs will cost, said before anything trains (``arena plugin check``, ``arena play``).

Every estimate comes from what this machine measured before, in the run's database and the others given (a check
reads the arena's, a play the check's): a model's last training of the same plugin on the same track (its artifact's
seconds); for a defense never trained here, its smoke match's one epoch scaled as the baseline's training compares
with the baseline's smoke epoch; for a match, the median time on the same track of the same opponent's matches with
an earlier version of the same plugin (a second check), else of the same defense's matches, else of the same
attack's, else of any. Unknown stays unknown, and says so.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import aliased

from arena.contract.plugins import BUILTIN_TEAM
from arena.play import validation
from arena.store import Artifact, Database, Job, Plugin, PluginVersion, Result, Team

#: the defense whose trainings calibrate an estimate from a smoke epoch (the smoke kit's defense)
BASELINE = f"{BUILTIN_TEAM}/{validation.BASELINE_DEFENSE}"
#: the jobs that train, and the kind of artifact each makes
TRAININGS = {"train-defense": "defense", "train-twin": "twin", "train-substitute": "substitute"}
#: matches read per estimate (the newest are as good as all)
SAMPLE = 500


@dataclass(frozen=True)
class Training:
    """A model to train: its kind (defense, twin, substitute), whose it is, where, and the estimate and its basis."""

    kind: str
    label: str
    track: str
    seconds: float | None
    basis: str = ""


@dataclass(frozen=True)
class Cost:
    """What a run will train and play, with estimates (None: unknown)."""

    trainings: list[Training]
    matches: int
    match_seconds: float | None  # all the matches together

    @property
    def seconds(self) -> float | None:
        """The whole estimate, when every part of it is known."""
        parts = [t.seconds for t in self.trainings] + [self.match_seconds if self.matches else 0.0]
        return None if any(p is None for p in parts) else float(sum(p for p in parts if p is not None))


def cost(db: Database, round_id: int | None, others: Iterable[Database | None] = ()) -> Cost:
    """What the queued jobs of ``round_id`` (None: those of no round) in ``db`` will cost."""
    sources = [db, *(o for o in others if o is not None)]
    with db.session() as session:
        in_round = Job.round_id.is_(None) if round_id is None else Job.round_id == round_id
        jobs = session.execute(select(Job.kind, Job.params).where(in_round, Job.state == "queued")).all()
        ids = {params.get(side) for _, params in jobs for side in ("attack", "defense")} - {None}
        versions = {v.id: v for v in session.scalars(select(PluginVersion).where(PluginVersion.id.in_(ids)))}
        owners = {i: _Owner(v.plugin.team.name, v.plugin.name, _smoke_epoch(v)) for i, v in versions.items()}
        sides = {i: Side(v.plugin.team.name, v.plugin.name, v.content_hash) for i, v in versions.items()}
    trainings = [
        _estimate(sources, TRAININGS[kind], params["track"], owners.get(params.get("defense")))
        for kind, params in jobs
        if kind != "match"
    ]
    order = list(TRAININGS.values())
    trainings.sort(key=lambda t: (order.index(t.kind), t.label))
    medians = _MatchTimes(sources)
    matches = [
        medians.of(params["track"], sides.get(params["attack"], UNKNOWN), sides.get(params["defense"], UNKNOWN))
        for kind, params in jobs
        if kind == "match"
    ]
    known = None if None in matches else float(sum(m for m in matches if m is not None))
    return Cost(trainings, len(matches), known)


@dataclass(frozen=True)
class _Owner:
    """Whose defense a training job trains, and how long its smoke match's one epoch took."""

    team: str
    plugin: str
    smoke_epoch: float | None


def _estimate(sources: list[Database], kind: str, track: str, owner: _Owner | None) -> Training:
    """A training with its estimate: its plugin's last training of that kind here, else one from its smoke epoch."""
    label = f"{owner.team}/{owner.plugin}" if owner else "the arena's substitute"
    seconds = _last_training(sources, kind, track, (owner.team, owner.plugin) if owner else None)
    if seconds is not None:
        return Training(kind, label, track, seconds, "its last training here")
    if owner is not None and owner.smoke_epoch is not None:
        basis = f"its smoke epoch, scaled as {BASELINE}'s training here"
        return Training(kind, label, track, _scaled(sources, track, owner.smoke_epoch), basis)
    return Training(kind, label, track, None)


def _scaled(sources: list[Database], track: str, smoke_epoch: float) -> float | None:
    """A training on ``track`` estimated from the defense's smoke epoch: times the ratio of the baseline's training
    on ``track`` to the baseline's smoke epoch, both measured on this machine (None where either is not)."""
    full = _last_training(sources, "defense", track, (BUILTIN_TEAM, validation.BASELINE_DEFENSE))
    with sources[0].session() as session:
        kit = session.scalar(select(Artifact.meta).where(Artifact.key == validation.kit_keys()[0]))
    epoch = kit.get("seconds") if kit else None
    return smoke_epoch * full / epoch if full is not None and isinstance(epoch, int | float) and epoch > 0 else None


def _smoke_epoch(version: PluginVersion) -> float | None:
    """Seconds the version's smoke match trained its one epoch (validation records it), if it did."""
    smoke = (version.checks or {}).get("smoke") or {}
    seconds = smoke.get("training_seconds") if isinstance(smoke, dict) else None
    return float(seconds) if isinstance(seconds, int | float) else None


def _last_training(sources: list[Database], kind: str, track: str, owner: tuple[str, str] | None) -> float | None:
    """Seconds the newest training of ``kind`` on ``track`` took (of ``owner``'s plugin, any version)."""
    query = select(Artifact.meta).where(Artifact.kind == kind, Artifact.track == track)
    if owner:
        query = (
            query.join(PluginVersion, Artifact.plugin_version_id == PluginVersion.id)
            .join(Plugin, PluginVersion.plugin_id == Plugin.id)
            .join(Team, Plugin.team_id == Team.id)
            .where(Team.name == owner[0], Plugin.name == owner[1])
        )
    for source in sources:
        with source.session() as session:
            meta = session.scalars(query.order_by(Artifact.id.desc()).limit(1)).first()
        if meta and isinstance(meta.get("seconds"), int | float):
            return float(meta["seconds"])
    return None


@dataclass(frozen=True)
class Side:
    """One side of a match to estimate: its plugin's team and name, and its version's content hash."""

    team: str | None
    plugin: str | None
    content_hash: str | None


UNKNOWN = Side(None, None, None)
AttackVersion, DefenseVersion = aliased(PluginVersion), aliased(PluginVersion)


class _MatchTimes:
    """Median match times on this machine, each read once: of an earlier version of the same plugin against the same
    opponent (a second check), of the same defense's matches, of the same attack's, of the track's."""

    def __init__(self, sources: list[Database]) -> None:
        self.sources = sources
        self.known: dict[tuple[str, str, Side, Side], float | None] = {}

    def of(self, track: str, attack: Side, defense: Side) -> float | None:
        """A match's estimate: the median of the first of those kinds of matches that this machine played."""
        tiers = [("earlier", attack, defense), ("earlier", defense, attack), ("same", defense, UNKNOWN)]
        tiers += [("same", attack, UNKNOWN), ("track", UNKNOWN, UNKNOWN)]
        for tier, own, other in tiers:
            if (tier != "track" and own.content_hash is None) or (tier == "earlier" and other.content_hash is None):
                continue
            key = (track, tier, own, other)
            if key not in self.known:
                self.known[key] = self._median(track, tier, own is attack, own, other)
            if self.known[key] is not None:
                return self.known[key]
        return None

    def _median(self, track: str, tier: str, attacks: bool, own: Side, other: Side) -> float | None:
        query = (
            select(Result.wall_time)
            .join(AttackVersion, Result.attack_version_id == AttackVersion.id)
            .join(DefenseVersion, Result.defense_version_id == DefenseVersion.id)
            .where(Result.track == track, Result.status == "ok")
        )
        mine, theirs = (AttackVersion, DefenseVersion) if attacks else (DefenseVersion, AttackVersion)
        if tier == "same":
            query = query.where(mine.content_hash == own.content_hash)
        elif tier == "earlier":  # by team and name: ids differ between databases
            query = (
                query.join(Plugin, mine.plugin_id == Plugin.id)
                .join(Team, Plugin.team_id == Team.id)
                .where(Team.name == own.team, Plugin.name == own.plugin, mine.content_hash != own.content_hash)
                .where(theirs.content_hash == other.content_hash)
            )
        times: list[float] = []
        for source in self.sources:
            with source.session() as session:
                times += session.scalars(query.order_by(Result.id.desc()).limit(SAMPLE)).all()
        return float(statistics.median(times)) if times else None
