"""What one match needs (:class:`MatchSpec`), what its attack may see of it, and where its defense is hosted."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from arena.contract.plugins import PluginSource
from arena.play import hosts
from arena.play.hosts import Host, Timings
from arena.play.watch import InferenceBudget
from arena.rules.tracks import Track

WITHHELD = PluginSource(origin="withheld", files={})


@dataclass(frozen=True)
class MatchSpec:
    """Everything one match needs; no database, so any executor can run it."""

    attack: PluginSource
    defense: PluginSource
    track: Track
    threat: str
    seed: int
    defense_artifact: bytes
    twin_artifact: bytes | None
    substitute_artifact: bytes
    evaluation: bytes
    data_dir: Path
    cache_dir: Path
    targeted: bool = False
    randomized: bool = False

    @property
    def attacked_artifact(self) -> bytes:
        """The trained model the attack's threat hands over: the twin under gray-box, else the defended model."""
        return self.twin_artifact if self.threat == "gray-box" and self.twin_artifact else self.defense_artifact


def attack_view(spec: MatchSpec) -> MatchSpec:
    """The spec as the attack's process may see it: only the model its threat hands over.

    The attack's process receives this spec whole, so whatever it holds, the attack can reach
    (through its frames or the garbage collector): under gray-box the defended model's artifact is
    withheld, under black-box the defense's artifacts and its code are (the substitute stays). The
    evaluation set is never there: the attack receives its batches one call at a time.
    """
    spec = replace(spec, evaluation=b"")
    if spec.threat == "white-box":
        return replace(spec, twin_artifact=None)
    if spec.threat == "gray-box":
        return replace(spec, defense_artifact=b"")
    return replace(spec, defense=WITHHELD, defense_artifact=b"", twin_artifact=None)


def host_of(spec: MatchSpec, timings: Timings, artifact: bytes | None = None) -> Host:
    """The host of the defended model (or of ``artifact``, the twin), on the device ``timings`` decide."""
    model = spec.defense_artifact if artifact is None else artifact
    track = spec.track
    budget = InferenceBudget(track.inference_seconds)
    return Host(
        spec.defense,
        model,
        track.num_classes,
        spec.cache_dir,
        track.time_limit,
        hosts.device_for(model, timings),
        budget,
    )
