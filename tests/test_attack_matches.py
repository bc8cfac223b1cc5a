"""The built-in attacks in real matches: sandboxed, under each threat model they declare, judged by the referee.

A small digits track (and its l0 twin for one-pixel) against the undefended baseline, trained once for the module.
Every attack must play every threat it declares, stay within the budget (the referee records no violation) and
break a good share of the samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
from plugin_harness import PLUGINS, load_plugin

from arena.contract import plugins
from arena.contract.plugins import PluginSource
from arena.play import training
from arena.play.match import MatchSpec, play
from arena.play.training import TrainSpec
from arena.rules import evaluation
from arena.rules.tracks import TRACKS, Track

SMALL = {"eval_size": 60, "batch_size": 30, "epochs": 10, "time_limit": 120.0}
TRACKS_BY_NORM = {
    "linf": dataclasses.replace(TRACKS["digits"], name="digits-match-test", max_queries=20, **SMALL),
    "l0": dataclasses.replace(TRACKS["digits-l0"], name="digits-l0-match-test", max_queries=100, **SMALL),
}
#: the least success rate (over samples correct when clean) against the undefended model itself, in white-box;
#: a targeted attack succeeds only where it hits its target. Elsewhere (the twin, the substitute) at least 0.1.
#: CW-L2 (kappa 0) keeps the smallest example that still fools the twin once rounded to the pixel grid: such
#: minimal examples transfer weakly to the real model (Carlini and Wagner raise kappa for transfer)
TRANSFERRED_SUCCESS = {"cw-l2": 0.05, "simba": 0.08}  # simba: the same queries under every threat
#: SimBA spends 20 queries per image here; on the secret images (issue 11) it breaks 0.11 to 0.2 of them, 0.09 of
#: these 60 since each image whose ball a lookup held was redrawn (issue 24)
WHITE_BOX_SUCCESS = {"fgsm-targeted": 0.25, "simba": 0.08, "universal": 0.1, "one-pixel": 0.1, "rand-fgsm": 0.2}


@dataclass(frozen=True)
class Arena:
    """The undefended baseline, its twin and the substitute, trained once per track."""

    root: Path
    defense: PluginSource
    artifacts: dict[str, tuple[bytes, bytes, bytes]]

    def play(self, name: str, threat: str, track: Track) -> dict:
        """The metrics of a match of the built-in attack ``name``; fails the test if the match failed."""
        attack = plugins.read_folder(PLUGINS / "attacks" / name)
        defended, twin, substitute = self.artifacts[track.name]
        spec = MatchSpec(
            attack=attack,
            defense=self.defense,
            track=track,
            threat=threat,
            seed=0,
            defense_artifact=defended,
            twin_artifact=twin,
            substitute_artifact=substitute,
            evaluation=evaluation.build(track, self.root / "data", b"test").pack(track.levels),
            data_dir=self.root / "data",
            cache_dir=self.root / "cache",
            targeted=load_plugin("attack", name).targeted,
        )
        outcome = play(spec)
        assert outcome.status == "ok", f"{name} under {threat}: {outcome.error}\n{outcome.log_tail}"
        return outcome.metrics


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Arena:
    root = tmp_path_factory.mktemp("attack-matches")
    defense = plugins.read_folder(PLUGINS / "defenses" / "undefended")
    artifacts = {}
    for track in TRACKS_BY_NORM.values():
        specs = [TrainSpec(defense, track, seed, root / "data", root / "cache") for seed in (1, 2)]
        defended, twin = (training.train_defense(spec)[0] for spec in specs)
        artifacts[track.name] = (defended, twin, training.train_substitute(track, root / "data")[0])
    return Arena(root, defense, artifacts)


def matches() -> list[tuple[str, str]]:
    """Every built-in attack under every threat it declares (on the track of its first norm)."""
    names = sorted(folder.name for folder in (PLUGINS / "attacks").iterdir() if (folder / "plugin.toml").is_file())
    return [(name, threat) for name in names for threat in load_plugin("attack", name).threats]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "threat"), matches())
def test_attack_plays_a_real_match_within_budget(arena: Arena, name: str, threat: str) -> None:
    cls = load_plugin("attack", name)
    track = TRACKS_BY_NORM["l0" if "l0" in cls.norms else "linf"]
    metrics = arena.play(name, threat, track)
    assert metrics["violations"] == 0, "the attack stays within the budget: the referee changed nothing"
    assert metrics["clean_accuracy"] > 0.8
    least = WHITE_BOX_SUCCESS.get(name, 0.5) if threat == "white-box" else TRANSFERRED_SUCCESS.get(name, 0.1)
    assert metrics["success_rate"] >= least, metrics
    assert metrics["queries_per_sample"] <= track.max_queries
    if cls.targeted:
        assert metrics["target_hit_rate"] == metrics["success_rate"]
    if threat == "black-box" or name in ("simba", "one-pixel"):
        return
    assert metrics["queries"] == 0, "white-box and gray-box gradient attacks query nothing"
