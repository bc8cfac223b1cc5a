"""The lecture replayed: each claim of the course beside the arena's own figure and the paper's.

A round's boards (:func:`arena.results.scoring.round_standings`) hold every figure a claim needs: the built-in
plugins (team ``arena``) played against each other on a track and, for the physical-world claim, on
its printed-and-photographed sibling. :func:`lessons` reads them and gives each claim a verdict:

* ``reproduced``: the arena's figures have the paper's shape (the test written beside the claim);
* ``not reproduced``: they do not, and the reason says which figure misses;
* ``not played``: the round lacks a match the claim needs (another track, a plugin left out).

Only built-in plugins are read, so a report never shows a team's result.

Over 400 lines: most of it is the course's claims, one table of data, read as the lecture reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from arena.contract.plugins import BUILTIN_TEAM
from arena.results.boards import Board, Cell, DefenseStanding

#: the team whose plugins the lessons read: the built-ins
TEAM = BUILTIN_TEAM

#: the printed-and-photographed sibling of a track
PHYSICAL = {"digits": "digits-physical", "mnist-linf": "mnist-physical"}

WHITE, GRAY, BLACK = "white-box", "gray-box", "black-box"


@dataclass(frozen=True)
class Ref:
    """One figure of a round: ``metric`` of ``attack`` against ``defense`` under ``threat``.

    ``metric``: ``robust`` (robust accuracy), ``success`` (success rate), ``clean`` (the defense's clean
    accuracy; no attack), ``worst`` (its robust accuracy against the strongest built-in attack of the threat).
    ``physical``: read on the track's printed-and-photographed sibling.
    """

    metric: str
    defense: str
    attack: str | None = None
    threat: str = WHITE
    physical: bool = False

    def describe(self) -> str:
        """``robust accuracy of pgd-adv-training against pgd, white-box``, and the like."""
        text = {
            "robust": f"robust accuracy of {self.defense} against {self.attack}, {self.threat}",
            "success": f"success rate of {self.attack} against {self.defense}, {self.threat}",
            "clean": f"clean accuracy of {self.defense}",
            "worst": f"robust accuracy of {self.defense} against the strongest {self.threat} attack",
        }[self.metric]
        return text + (", printed and photographed" if self.physical else "")


#: a claim's test: its figures by name -> (reproduced, why)
Test = Callable[[dict[str, float]], tuple[bool, str]]


@dataclass(frozen=True)
class Claim:
    """A claim of the course: the paper's words and figure, the round's figures, and the test of its shape."""

    key: str
    title: str
    claim: str
    papers: tuple[tuple[str, str], ...]  # (citation, address)
    published: str
    figures: dict[str, Ref]
    test: Test


@dataclass
class Lesson:
    """A claim judged on one round: its figures (None: not played) and the verdict."""

    key: str
    title: str
    claim: str
    papers: list[dict[str, str]]  # citation, url
    published: str
    figures: list[dict[str, Any]] = field(default_factory=list)  # name, what, value
    verdict: str = "not played"
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def lessons(boards: Sequence[Board], track: str, claims: Sequence[Claim] | None = None) -> list[Lesson]:
    """Every claim judged on the boards of ``track`` (and of its physical sibling) of one round."""
    index = _Index(boards, track)
    judged = []
    for claim in CLAIMS if claims is None else claims:
        values = {name: index.value(ref) for name, ref in claim.figures.items()}
        papers = [{"citation": citation, "url": url} for citation, url in claim.papers]
        lesson = Lesson(claim.key, claim.title, claim.claim, papers, claim.published)
        lesson.figures = [
            {"name": name, "what": ref.describe(), "value": values[name]} for name, ref in claim.figures.items()
        ]
        missing = [claim.figures[name].describe() for name, value in values.items() if value is None]
        if missing:
            lesson.why = "the round has no " + "; no ".join(missing)
        else:
            ok, lesson.why = claim.test({name: float(v) for name, v in values.items() if v is not None})
            lesson.verdict = "reproduced" if ok else "not reproduced"
        judged.append(lesson)
    return judged


class _Index:
    """The cells and defense standings of the built-in plugins on a track and its physical sibling."""

    def __init__(self, boards: Sequence[Board], track: str) -> None:
        self.tracks = {False: track, True: PHYSICAL.get(track)}
        self.cells: dict[tuple[str, str, str, str], Cell] = {}
        self.defenses: dict[tuple[str, str, str], DefenseStanding] = {}
        for board in boards:
            for standing in board.defenses:
                if standing.entry.team == TEAM:
                    self.defenses[board.track, board.threat, standing.entry.plugin] = standing
            for attack, row in zip(board.attacks, board.matrix, strict=True):
                for defense, cell in zip(board.defenses, row, strict=True):
                    if cell is not None and attack.entry.team == TEAM and defense.entry.team == TEAM:
                        self.cells[board.track, board.threat, attack.entry.plugin, defense.entry.plugin] = cell

    def value(self, ref: Ref) -> float | None:
        track = str(self.tracks[ref.physical])
        if ref.metric == "clean":
            standing = self.defenses.get((track, ref.threat, ref.defense))
            return None if standing is None else standing.clean_accuracy
        if ref.metric == "worst":  # the strongest built-in attack of the threat: only built-ins are read
            cells = [
                cell.robust_accuracy
                for (t, threat, _, defense), cell in self.cells.items()
                if (t, threat, defense) == (track, ref.threat, ref.defense) and cell.status == "ok"
            ]
            return min((value for value in cells if value is not None), default=None)
        cell = self.cells.get((track, ref.threat, str(ref.attack), ref.defense))
        if cell is None or cell.status != "ok":
            return None
        return cell.robust_accuracy if ref.metric == "robust" else cell.success_rate


# --------------------------------------------------------------------------------------------------
# The claims: each test says the paper's shape in figures
# --------------------------------------------------------------------------------------------------


def _fgsm_fools(v: dict[str, float]) -> tuple[bool, str]:
    ok = v["success"] >= 0.5
    return ok, (
        f"FGSM fools the undefended network on {_pct(v['success'])} of the images it reads right "
        f"({_pct(v['clean'])} clean, {_pct(v['robust'])} left)" + ("" if ok else ": less than half")
    )


def _fgsm_training(v: dict[str, float]) -> tuple[bool, str]:
    resists = v["trained_fgsm"] >= v["plain_fgsm"] + 0.3
    around = min(v["trained_rand"], v["trained_transfer"]) <= v["trained_fgsm"] - 0.1
    why = (
        f"FGSM training keeps {_pct(v['trained_fgsm'])} against FGSM (undefended: {_pct(v['plain_fgsm'])}); "
        f"RAND+FGSM leaves {_pct(v['trained_rand'])}, the transferred attack {_pct(v['trained_transfer'])}"
    )
    if not resists:
        why += ": it does not resist FGSM itself"
    elif not around:
        why += ": neither RAND+FGSM nor transfer gets around it by 10 points"
    return resists and around, why


def _ensemble(v: dict[str, float]) -> tuple[bool, str]:
    ok = v["ensemble"] > v["fgsm_trained"] and v["ensemble"] >= v["plain"]
    return ok, (
        f"against the transferred attack, ensemble training keeps {_pct(v['ensemble'])}, FGSM training "
        f"{_pct(v['fgsm_trained'])}, the undefended network {_pct(v['plain'])}"
    )


def _distillation(v: dict[str, float]) -> tuple[bool, str]:
    stops = v["pgd"] >= v["plain_pgd"] + 0.3
    falls = v["cw"] <= 0.5 * v["pgd"]
    why = (
        f"distillation keeps {_pct(v['fgsm'])} against FGSM and {_pct(v['pgd'])} against PGD (undefended: "
        f"{_pct(v['plain_pgd'])}), and {_pct(v['cw'])} against Carlini-Wagner"
    )
    if not stops:
        why += ": the gradient attacks are not stopped"
    elif not falls:
        why += ": Carlini-Wagner does not take half of what PGD leaves"
    return stops and falls, why


def _by_threat(name: str) -> Test:
    def test(v: dict[str, float]) -> tuple[bool, str]:
        ok = v["black"] >= v["white"] + 0.2 and v["gray"] >= v["white"]
        return ok, (
            f"{name} keeps {_pct(v['black'])} against the strongest black-box attack, {_pct(v['gray'])} in "
            f"gray-box and {_pct(v['white'])} in white-box (undefended, black-box: {_pct(v['plain_black'])})"
        )

    return test


def _defense_gan(v: dict[str, float]) -> tuple[bool, str]:
    ok = v["black"] >= v["white"] + 0.1 and v["black"] > v["plain_black"]
    why = (
        f"Defense-GAN keeps {_pct(v['black'])} against the transferred attack (undefended: {_pct(v['plain_black'])}) "
        f"and {_pct(v['white'])} against the strongest white-box attack with BPDA; clean {_pct(v['clean'])}"
    )
    if v["black"] <= v["plain_black"]:
        why += ": in black-box it does no better than the undefended network"
    return ok, why


def _madry(v: dict[str, float]) -> tuple[bool, str]:
    others = {name.removeprefix("worst:"): value for name, value in v.items() if name.startswith("worst:")}
    runner_up = max(others, key=others.__getitem__)
    resists = v["pgd"] >= others["undefended"] + 0.2
    ok = resists and v["worst"] > others[runner_up]
    why = (
        f"PGD training keeps {_pct(v['pgd'])} against PGD and {_pct(v['worst'])} against the strongest white-box "
        f"attack; the best of the other trained models there, {runner_up}, keeps {_pct(others[runner_up])}"
    )
    if not resists:
        why += ": PGD training does not keep 20 points more than the undefended network"
    return ok, why


def _physical(v: dict[str, float]) -> tuple[bool, str]:
    kept_fgsm = v["fgsm_photo"] / v["fgsm"] if v["fgsm"] else 0.0
    kept_ifgsm = v["ifgsm_photo"] / v["ifgsm"] if v["ifgsm"] else 0.0
    ok = kept_fgsm > kept_ifgsm
    return ok, (
        f"the photo destroys {_pct(1 - kept_fgsm)} of FGSM's success ({_pct(v['fgsm'])} -> {_pct(v['fgsm_photo'])}) "
        f"and {_pct(1 - kept_ifgsm)} of I-FGSM's ({_pct(v['ifgsm'])} -> {_pct(v['ifgsm_photo'])})"
    )


def _worst(defense: str, threat: str) -> Ref:
    return Ref("worst", defense, None, threat)


GOODFELLOW = ("Goodfellow, Shlens and Szegedy, ICLR 2015", "https://arxiv.org/abs/1412.6572")
TRAMER = ("Tramer, Kurakin, Papernot, Goodfellow, Boneh and McDaniel, ICLR 2018", "https://arxiv.org/abs/1705.07204")
PAPERNOT = ("Papernot, McDaniel, Wu, Jha and Swami, IEEE S&P 2016", "https://arxiv.org/abs/1511.04508")
CARLINI = ("Carlini and Wagner, IEEE S&P 2017", "https://arxiv.org/abs/1608.04644")
MENG = ("Meng and Chen, ACM CCS 2017", "https://arxiv.org/abs/1705.09064")
CARLINI_MAGNET = ("Carlini and Wagner, 2017", "https://arxiv.org/abs/1711.08478")
SAMANGOUEI = ("Samangouei, Kabkab and Chellappa, ICLR 2018", "https://arxiv.org/abs/1805.06605")
ATHALYE = ("Athalye, Carlini and Wagner, ICML 2018", "https://arxiv.org/abs/1802.00420")
MADRY = ("Madry, Makelov, Schmidt, Tsipras and Vladu, ICLR 2018", "https://arxiv.org/abs/1706.06083")
KURAKIN = ("Kurakin, Goodfellow and Bengio, ICLR 2017 workshop", "https://arxiv.org/abs/1607.02533")

#: the trained models PGD training is compared with (the detectors and projections are claims of their own)
_OTHERS = ("undefended", "fgsm-adv-training", "ensemble-adv-training", "distillation")

#: the course's claims, in the order of the lecture
CLAIMS: tuple[Claim, ...] = (
    Claim(
        "fgsm-undefended",
        "FGSM fools an undefended network",
        "One step along the sign of the loss gradient (FGSM) fools a plainly trained network on most inputs.",
        (GOODFELLOW,),
        "MNIST, eps 0.25: FGSM gives an error rate of 99.9 % on a shallow softmax classifier and 89.4 % on a "
        "maxout network (Goodfellow et al., section 4); Madry et al.'s plainly trained CNN falls from 99.2 % to "
        "6.4 % accuracy under FGSM at eps 0.3 (section 5).",
        {
            "clean": Ref("clean", "undefended"),
            "robust": Ref("robust", "undefended", "fgsm"),
            "success": Ref("success", "undefended", "fgsm"),
        },
        _fgsm_fools,
    ),
    Claim(
        "fgsm-training",
        "FGSM adversarial training resists FGSM, not RAND+FGSM or transferred examples",
        "Training on its own FGSM examples makes a model resist FGSM, but it learns to mask its gradient: a random "
        "step before the gradient step (RAND+FGSM) and examples transferred from another model get through.",
        (GOODFELLOW, TRAMER),
        "MNIST, eps 0.25: adversarial training lowers a maxout network's error on FGSM examples from 89.4 % to "
        "17.9 % (Goodfellow et al., section 6). ImageNet, eps 16/256, the adversarially trained Inception v3: a "
        "random step first (R+Step-LL) raises the white-box error of the single-step attack from 26.6 % to 64.8 % "
        "(Tramer et al., table 2), and examples transferred from another model (36.3 %) beat its own white-box "
        "ones (table 1); on MNIST a CNN trained on R+FGSM keeps over 90 % against R+FGSM and 18.0 % against PGD "
        "(section 4.1).",
        {
            "trained_fgsm": Ref("robust", "fgsm-adv-training", "fgsm"),
            "plain_fgsm": Ref("robust", "undefended", "fgsm"),
            "trained_rand": Ref("robust", "fgsm-adv-training", "rand-fgsm"),
            "trained_transfer": Ref("robust", "fgsm-adv-training", "transfer", BLACK),
        },
        _fgsm_training,
    ),
    Claim(
        "ensemble",
        "Ensemble adversarial training resists transferred attacks",
        "Training also on FGSM examples crafted on static pre-trained models decouples the training examples "
        "from the model's own gradient: transferred examples lose their edge.",
        (TRAMER,),
        "ImageNet, eps 16/256, the worst of 15 attacks transferred from held-out models: top-1 error 40.8 % on "
        "the adversarially trained Inception v3, 34.0 % and 33.4 % on its ensemble-trained versions (3 and 4 "
        "models), 34.5 % against 27.0 % for Inception-ResNet v2 (Tramer et al., table 4).",
        {
            "ensemble": Ref("robust", "ensemble-adv-training", "transfer", BLACK),
            "fgsm_trained": Ref("robust", "fgsm-adv-training", "transfer", BLACK),
            "plain": Ref("robust", "undefended", "transfer", BLACK),
        },
        _ensemble,
    ),
    Claim(
        "distillation",
        "Distillation stops gradient attacks, not Carlini-Wagner",
        "Defensive distillation (training at a high softmax temperature) saturates the softmax, so attacks that "
        "follow the gradient of the loss fail; Carlini and Wagner's attack, on the logits, breaks it.",
        (PAPERNOT, CARLINI),
        "MNIST: distillation at T = 100 lowers the success of the Jacobian saliency attack from 95 % to less than "
        "0.5 % (Papernot et al., abstract); Carlini and Wagner's L0, L2 and L-inf attacks succeed on 100 % of the "
        "distilled network's inputs, with a mean L-inf of 0.18 (table VI).",
        {
            "fgsm": Ref("robust", "distillation", "fgsm"),
            "pgd": Ref("robust", "distillation", "pgd"),
            "plain_pgd": Ref("robust", "undefended", "pgd"),
            "cw": Ref("robust", "distillation", "cw-l2"),
        },
        _distillation,
    ),
    Claim(
        "magnet",
        "MagNet holds in black- and gray-box, falls in white-box",
        "MagNet's autoencoders reject inputs far from the data and reform the rest: attacks that ignore them "
        "fail, an attack that optimises through them succeeds.",
        (MENG, CARLINI_MAGNET),
        "Meng and Chen find MagNet effective against the strongest attacks of the day in black- and gray-box "
        "(the attacker knows the defense but not its autoencoders' parameters); Carlini and Wagner break it with "
        "an attack that optimises through the autoencoders. On MNIST at eps 0.3, white-box, Samangouei et al.'s "
        "MagNet keeps 0.191 against FGSM and 0.038 against Carlini-Wagner L2 (table 4, model A).",
        {
            "black": _worst("magnet", BLACK),
            "gray": _worst("magnet", GRAY),
            "white": _worst("magnet", WHITE),
            "plain_black": _worst("undefended", BLACK),
        },
        _by_threat("MagNet"),
    ),
    Claim(
        "defense-gan",
        "Defense-GAN holds in black-box, falls to BPDA in white-box",
        "Projecting every input onto the range of a GAN trained on clean data washes transferred perturbations "
        "away; a white-box attack that passes the gradient straight through the projection (BPDA) gets through.",
        (SAMANGOUEI, ATHALYE),
        "MNIST, eps 0.3, FGSM transferred from a substitute: Defense-GAN keeps 0.931 where the undefended "
        "classifier keeps 0.634 (Samangouei et al., table 1, classifier A, substitute B), and white-box FGSM "
        "without BPDA 0.988 against 0.217 (table 4); with BPDA Athalye et al. take it to 55 % accuracy at an L2 "
        "distance of 0.005 (their table 1).",
        {
            "black": Ref("robust", "defense-gan", "transfer", BLACK),
            "plain_black": Ref("robust", "undefended", "transfer", BLACK),
            "white": _worst("defense-gan", WHITE),
            "clean": Ref("clean", "defense-gan"),
        },
        _defense_gan,
    ),
    Claim(
        "madry",
        "PGD adversarial training resists PGD",
        "Training on the strongest first-order attack (PGD) gives a model that resists it, and the strongest "
        "white-box attack of the round better than plain, FGSM, ensemble or distilled training does.",
        (MADRY,),
        "MNIST, eps 0.3: 98.8 % clean, 95.6 % against FGSM, 93.2 % against 40-step PGD and 89.3 % against "
        "100-step PGD with 20 restarts (Madry et al., table 1); over 95 % against black-box attacks.",
        {
            "pgd": Ref("robust", "pgd-adv-training", "pgd"),
            "worst": _worst("pgd-adv-training", WHITE),
            **{f"worst:{name}": _worst(name, WHITE) for name in _OTHERS},
        },
        _madry,
    ),
    Claim(
        "physical",
        "FGSM survives the photo better than iterative FGSM",
        "Printed and photographed, adversarial images keep part of their effect; single-step FGSM's larger "
        "changes survive the photo better than the finer ones of iterative FGSM.",
        (KURAKIN,),
        "ImageNet, Inception v3, eps 16 (of 255), photos of printed images: the photo destroys 12.5 % of the "
        "FGSM examples, 40.4 % of the basic iterative ones and 72.2 % of the least-likely-class ones (Kurakin et "
        "al., table 3, top-1, average case).",
        {
            "fgsm": Ref("success", "undefended", "fgsm"),
            "fgsm_photo": Ref("success", "undefended", "fgsm", physical=True),
            "ifgsm": Ref("success", "undefended", "ifgsm"),
            "ifgsm_photo": Ref("success", "undefended", "ifgsm", physical=True),
        },
        _physical,
    ),
)


def markdown(judged: Sequence[Lesson], track: str, round_number: int) -> str:
    """The report as Markdown: a summary table, then each claim with its figures and verdict."""
    sibling = PHYSICAL.get(track)
    lines = [
        f"# The lecture replayed on {track}, round {round_number}",
        "",
        "Each claim of the course beside the arena's own figure (the built-in plugins, judged by the referee)"
        + (f"; the physical-world claim reads {sibling}" if sibling else "")
        + ", and the paper's published figure. The papers used other networks, budgets and attack settings:"
        " the verdict asks whether the arena's figures have the paper's shape.",
        "",
        "| claim | verdict |",
        "|---|---|",
        *(f"| [{lesson.title}](#{lesson.key}) | {lesson.verdict} |" for lesson in judged),
    ]
    for lesson in judged:
        lines += [
            "",
            f'<a id="{lesson.key}"></a>',
            f"## {lesson.title}: {lesson.verdict}",
            "",
            f"*{lesson.claim}*",
            "",
            "Published: " + "; ".join(f"[{p['citation']}]({p['url']})" for p in lesson.papers) + ".",
            lesson.published,
            "",
            f"| the arena's figure | round {round_number} |",
            "|---|---|",
            *(f"| {f['what']} | {'not played' if f['value'] is None else _pct(f['value'])} |" for f in lesson.figures),
            "",
            lesson.why[:1].upper() + lesson.why[1:] + ".",
        ]
    return "\n".join(lines) + "\n"
