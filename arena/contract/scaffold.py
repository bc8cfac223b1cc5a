"""``arena plugin new``: a working plugin folder to start from, attack or defense."""

from __future__ import annotations

from pathlib import Path

ATTACK = '''"""{title}: describe the attack's formula here in one or two lines, and cite its paper."""

import torch

from arena import Attack, hookimpl


class {cls}(Attack):
    """One signed-gradient step (FGSM); replace with your own algorithm.

    x_adv = clip(x + eps * sign(grad_x L(f(x), y)), 0, 1)
    """

    norms = ("linf",)
    threats = ("white-box", "gray-box")
    targeted = False

    def run(self, target, x, y, budget):
        model = target.model
        x = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
        return (x + budget.eps * grad.sign()).clamp(0, 1).detach()


@hookimpl
def arena_attacks():
    return [{cls}]
'''

DEFENSE = '''"""{title}: describe the defense here in one or two lines, and cite its paper."""

import torch

from arena import Defense, hookimpl


class {cls}(Defense):
    """The track's reference architecture, plainly trained; replace with your own defense.

    Its parameters (``self.lr``) are the ``[params]`` of plugin.toml, stated there only.
    """

    def train(self, ctx):
        model = ctx.make_model()
        # Adam on this loss for ctx.epochs epochs of ctx.batches(128), stopped when the time budget is spent
        ctx.fit(model, lambda x, y: torch.nn.functional.cross_entropy(model(x), y), lr=self.lr)
        return model.eval()


@hookimpl
def arena_defenses():
    return [{cls}]
'''

MANIFEST = """name = "{name}"
kind = "{kind}"
team = "{team}"
summary = "TODO: one line saying what this {kind} does"
{extra}"""


#: a defense's parameters, as an example of the one place they are stated
PARAMS = "\n[params]\nlr = 0.001\n"


def create(kind: str, name: str, team: str, parent: Path) -> Path:
    """Write a new plugin folder ``parent/name`` and return it; refuse to overwrite."""
    folder = parent / name
    if folder.exists():
        raise FileExistsError(f"{folder} already exists")
    module = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in module.split("_")) or "Plugin"
    title = name.replace("-", " ").capitalize()
    extra = 'norms = ["linf"]\nthreats = ["white-box", "gray-box"]\ntargeted = false\n' if kind == "attack" else PARAMS
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(MANIFEST.format(name=name, kind=kind, team=team, extra=extra))
    code = (ATTACK if kind == "attack" else DEFENSE).format(title=title, cls=cls)
    (folder / f"{module}.py").write_text(code)
    return folder
