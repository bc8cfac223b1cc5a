"""Failures blamed on their author (issue 12): a defense cannot climb by making attacks fail, nor an attack
frame a defense. The defense's failures in the attack's process are replayed by the arena before they count."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
from hostile import write_attack

from arena.contract import plugins
from arena.play import training
from arena.play.match import MatchSpec, play
from arena.play.training import TrainSpec
from arena.results import boards
from arena.results.boards import Cell
from arena.rules import evaluation
from arena.rules.tracks import TRACKS

TRACK = dataclasses.replace(TRACKS["digits"], eval_size=60, batch_size=60, epochs=3, max_queries=20, time_limit=120.0)
PLUGINS = Path(__file__).resolve().parents[1] / "plugins"

#: a defense whose forward raises whenever its input requires a gradient (the issue's "CUDA error")
GRAD_CRASH = '''
"""Raises whenever a gradient is asked of it."""

import torch
from torch import nn

from arena import Defense, hookimpl


class Crashy(nn.Module):
    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn

    def forward(self, x):
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.cnn(x)


class GradCrash(Defense):
    def train(self, ctx):
        return Crashy(ctx.make_model())


@hookimpl
def arena_defenses():
    return [GradCrash]
'''


@dataclasses.dataclass(frozen=True)
class Kit:
    root: Path
    substitute: bytes
    evaluation: bytes

    def spec(self, attack: Path, defense: Path, threat: str) -> MatchSpec:
        source = plugins.read_folder(defense)
        model, _ = training.train_defense(TrainSpec(source, TRACK, 1, self.root / "data", self.root / "cache"))
        twin, _ = training.train_defense(TrainSpec(source, TRACK, 2, self.root / "data", self.root / "cache"))
        return MatchSpec(
            attack=plugins.read_folder(attack),
            defense=source,
            track=TRACK,
            threat=threat,
            seed=0,
            defense_artifact=model,
            twin_artifact=twin,
            substitute_artifact=self.substitute,
            evaluation=self.evaluation,
            data_dir=self.root / "data",
            cache_dir=self.root / "cache",
        )


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("blame")
    folder = root / "plugins" / "grad-crash"
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text('name = "grad-crash"\nkind = "defense"\nteam = "t"\nsummary = "s"\n')
    (folder / "grad_crash.py").write_text(textwrap.dedent(GRAD_CRASH))
    substitute, _ = training.train_substitute(TRACK, root / "data")
    return Kit(root, substitute, evaluation.build(TRACK, root / "data", b"test").pack(TRACK.levels))


@pytest.mark.parametrize("threat", ["white-box", "gray-box"])
def test_a_defense_that_crashes_under_gradients_loses_the_match(kit: Kit, threat: str) -> None:
    outcome = play(kit.spec(PLUGINS / "attacks" / "fgsm", kit.root / "plugins" / "grad-crash", threat))
    assert outcome.status == "failed" and outcome.metrics == {"blame": "defense"}
    assert "the defense failed, so the match counts against it" in outcome.error
    assert "CUDA error: an illegal memory access" in outcome.error and "replayed" in outcome.error


def test_an_attack_that_catches_the_defenses_failure_still_wins_the_match(kit: Kit) -> None:
    body = """
    try:
        target.model(x.clone().requires_grad_(True))
    except DefenseFailed as exc:
        print("caught:", exc, flush=True)
    return x
    """
    attack = write_attack(
        kit.root / "plugins", "catcher", body, threats=("white-box",), helpers="from arena import DefenseFailed"
    )
    outcome = play(kit.spec(attack, kit.root / "plugins" / "grad-crash", "white-box"))
    assert outcome.metrics == {"blame": "defense"} and "reproduced by the arena" in outcome.log_tail


def test_the_defense_still_plays_queries_and_the_referee(kit: Kit) -> None:
    outcome = play(kit.spec(PLUGINS / "attacks" / "simba", kit.root / "plugins" / "grad-crash", "black-box"))
    assert outcome.status == "ok" and "blame" not in outcome.metrics


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            "target._conn.send(('defense-fault', (x.numpy(), False, 'forward', 'forged')))\n"
            "assert target._conn.recv() is False\nreturn x",
            id="forged-report",
        ),
        pytest.param(
            "target._conn.send(('defense-fault', (x.numpy(), False, 'reject', 'forged')))\n"
            "assert target._conn.recv() is False\nreturn x",
            id="forged-reject",
        ),
        pytest.param("raise DefenseFailed('the defense failed (reproduced by the arena)')", id="raised-by-the-attack"),
        pytest.param("return target.model(x * float('nan'))", id="invalid-input"),
    ],
)
def test_an_attack_cannot_frame_an_honest_defense(kit: Kit, body: str) -> None:
    attack = write_attack(
        kit.root / "plugins", "framer", body, threats=("white-box",), helpers="from arena import DefenseFailed"
    )
    outcome = play(kit.spec(attack, PLUGINS / "defenses" / "undefended", "white-box"))
    assert "blame" not in outcome.metrics, outcome.error


def test_a_forfeit_counts_as_every_sample_broken_and_not_against_the_attack() -> None:
    from arena.results.boards import Entry, _attack, _defense

    entry = Entry(1, "t", "p", "abc", None, 1, 1)
    forfeit = Cell("failed", "k", 1, error="the defense failed", blame="defense")
    standing = _defense(entry, 0.9, [forfeit], [], {}, {})
    assert (
        standing.worst_case_robust_accuracy == 0.0 and standing.forfeited == 1 and standing.mean_robust_accuracy == 0.0
    )
    assert _attack(entry, 0, [forfeit], []).failed == 0
    assert _attack(entry, 0, [Cell("failed", "k", 1, error="the attack raised")], []).failed == 1
    assert boards.DefenseStanding.__dataclass_fields__["forfeited"]


#: a defense wrapping the plain CNN whose forward misbehaves first (``{forward}``): the blame tests' cheats
WRAPPED = """
\"\"\"A plain CNN whose forward misbehaves first.\"\"\"

import ctypes
import os
import sys
import time

import torch
from torch import nn

from arena import Defense, hookimpl


class Wrapped(nn.Module):
    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn

    def forward(self, x):
        graded = x.requires_grad and torch.is_grad_enabled()
        attacked = sum(name.startswith("arena_plugin_") for name in sys.modules) > 1
        {forward}
        return self.cnn(x)


class Cheat(Defense):
    def train(self, ctx):
        return Wrapped(ctx.make_model())


@hookimpl
def arena_defenses():
    return [Cheat]
"""


def cheat(kit: Kit, name: str, forward: str) -> Path:
    """A defense plugin folder whose forward runs ``forward`` (one line) before the CNN's."""
    folder = kit.root / "plugins" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.toml").write_text(f'name = "{name}"\nkind = "defense"\nteam = "t"\nsummary = "s"\n')
    (folder / f"{name.replace('-', '_')}.py").write_text(WRAPPED.replace("{forward}", forward))
    return folder


FGSM = PLUGINS / "attacks" / "fgsm"


@pytest.mark.parametrize(
    ("name", "forward", "said"),
    [
        ("exits", "if graded: os._exit(0)", "exited with status 0"),
        ("crashes", "if graded: ctypes.string_at(0)", "killed by signal SIGSEGV"),
        ("stalls", "if graded: time.sleep(600)", "over its inference budget"),
        ("hoards", "if graded: torch.empty(2**40)", "allocate"),
    ],
)
def test_a_defense_that_fails_under_gradients_in_any_form_loses_the_match(
    kit: Kit, name: str, forward: str, said: str
) -> None:
    """Exit, signal, hang or runaway allocation in the attack's process: the defense's code was running, the
    match is replayed with the defense apart, fails there again, and counts against the defense."""
    quick = dataclasses.replace(TRACK, inference_ms=20.0)
    outcome = play(dataclasses.replace(kit.spec(FGSM, cheat(kit, name, forward), "white-box"), track=quick))
    assert outcome.status == "failed" and outcome.metrics == {"blame": "defense"}, outcome.error
    assert "the defense failed, so the match counts against it" in (outcome.error or "")
    assert said in (outcome.error or ""), outcome.error
    assert outcome.wall_time < 60


@pytest.mark.parametrize("forward", ['if attacked: raise RuntimeError("sabotage")', "if attacked: os._exit(0)"])
def test_a_defense_that_fails_only_in_the_attacks_process_is_played_apart(kit: Kit, forward: str) -> None:
    """The saboteur tells the attack's process from its hosts (another plugin's module is loaded) and fails only
    there. The arena cannot reproduce it alone, so the match is played again with the defense apart: in a host of
    its own, it answers the attack's forward and backward passes, and the match's result is that one (the
    plain CNN's, against FGSM), marked disputed."""
    outcome = play(kit.spec(FGSM, cheat(kit, "saboteur", forward), "white-box"))
    assert outcome.status == "ok", outcome.error
    assert "played again with the defense apart" in outcome.metrics["disputed"]
    honest = play(kit.spec(FGSM, PLUGINS / "defenses" / "undefended", "white-box"))
    assert outcome.metrics["robust_accuracy"] <= honest.metrics["robust_accuracy"] + 0.2


def test_a_slow_defense_does_not_make_the_attack_time_out(kit: Kit) -> None:
    """Every forward pass takes 0.7 s: the attack's 12 calls spend 8.4 s in the defense's code, over the attack's
    own limit of 5 s, which is not charged for them."""
    body = """
    for _ in range(6):
        target.model(x)
    return x
    """
    attack = write_attack(kit.root / "plugins", "patient", body, threats=("white-box",))
    quick = dataclasses.replace(TRACK, time_limit=5.0)
    slow = cheat(kit, "slow", "time.sleep(0.7)")
    outcome = play(dataclasses.replace(kit.spec(attack, slow, "white-box"), track=quick))
    assert outcome.status == "ok", outcome.error
    assert "disputed" not in outcome.metrics


def test_a_defense_too_slow_for_its_budget_forfeits_in_the_referees_hosts(kit: Kit) -> None:
    quick = dataclasses.replace(TRACK, inference_ms=1.0)
    slow = cheat(kit, "slower", "time.sleep(0.05 * len(x) + 6)")
    outcome = play(dataclasses.replace(kit.spec(PLUGINS / "attacks" / "transfer", slow, "black-box"), track=quick))
    assert outcome.metrics == {"blame": "defense"} and "over its inference budget" in (outcome.error or "")


def test_an_attack_that_fakes_being_in_the_defenses_code_gains_nothing(kit: Kit) -> None:
    """It says the defense's code runs, then exits: the match is played again with the defense apart, where it
    exits again. Disputed: not its failure to count, and no result it could score with."""
    body = """
    from arena.play.threats import notify
    notify(target._conn, ("enter", 10**9, "forward"))
    os._exit(0)
    """
    attack = write_attack(kit.root / "plugins", "faker", body, threats=("white-box",), helpers="import os")
    outcome = play(kit.spec(attack, PLUGINS / "defenses" / "undefended", "white-box"))
    assert outcome.status == "failed" and outcome.metrics == {"blame": "disputed"}, outcome.error
    assert outcome.error.startswith("disputed: the attack's process failed while the defense's code ran in it")
