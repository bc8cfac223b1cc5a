"""Our FGSM, PGD-40 and Carlini-Wagner against torchattacks', side by side in one process: speed and strength.

Both sides attack the same model (the track's undefended reference model, trained by the arena's own training
code) on the same evaluation samples, in the track's batch size, on the same device, with the same parameters:

* FGSM at the track's eps;
* PGD-40 at the track's eps, step 2.5 * eps / 40, random start (ours with and without early stopping);
* Carlini-Wagner L2 with c = 1, kappa = 0, 100 Adam steps at lr 0.01, no binary search, no eps bound, on the
  model's logits shifted by a constant (the same classifier; see tests/test_attack_crosscheck.py for why).

It prints images per second for each side (best of ``--repeat`` runs, taking turns to go first, so that on a
loaded machine it measures the attacks rather than the load), their ratio (ours divided by torchattacks': above 1
means ours is faster) and the robust accuracy each side reaches.

    ARENA_DATA_DIR=../shared/data python bench/attack_speed.py --track mnist-linf [--repeat 3] [--threads N]

``--samples N`` attacks only the first N evaluation samples; ``--clock cpu`` times this process's CPU time instead
of the wall clock (with ``--threads 1``, the steadiest measure on a machine that other jobs keep busy). The trained
model is kept in ``ARENA_HOME/bench``, so later runs skip training. Needs torchattacks (``make`` installs it).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchattacks
from torch import nn

from arena import Budget
from arena.config import Settings
from arena.contract import plugins
from arena.play.training import TrainSpec, load_model, pick_device, train_defense
from arena.rules.seeds import derive_seed
from arena.rules.tracks import TRACKS, Track

ROOT = Path(__file__).resolve().parents[1]
Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ShiftedLogits(nn.Module):
    """The same classifier with every logit raised by 100 (softmax, argmax and margins unchanged)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + 100.0


class Target:
    """The white-box view our attacks need: the model and the device (see arena.Target)."""

    threat = "white-box"

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device


def reference_model(track: Track, settings: Settings, device: torch.device) -> nn.Module:
    """The track's undefended model, trained by the arena's training code once and kept in ``ARENA_HOME/bench``."""
    defense = plugins.read_folder(ROOT / "plugins" / "defenses" / "undefended")
    cache = settings.home / "bench"
    path = cache / f"undefended-{track.name}-{defense.content_hash[:12]}.pt"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        seed = derive_seed(b"bench", "defense", defense.content_hash, track.name)
        artifact, _ = train_defense(TrainSpec(defense, track, seed, settings.data_dir, cache))
        path.write_bytes(artifact)
        print(f"trained the undefended model on {track.name} in {time.perf_counter() - started:.0f} s: {path}")
    return load_model(path.read_bytes(), device, defense, cache)


def ours(name: str, model: nn.Module, norm: str, eps: float, **params: object) -> Attack:
    """Our built-in attack ``name`` (manifest parameters, updated by ``params``) as a function of ``(x, y)``."""
    loaded = plugins.load(plugins.read_folder(ROOT / "plugins" / "attacks" / name), Settings.from_env().home / "bench")
    attack = loaded.cls(**(loaded.manifest.params | params))
    device = next(model.parameters()).device
    target = Target(model, device)

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(0)
        return attack.run(target, x, y, Budget(norm, eps, 0, generator))

    return run


def measure(
    attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, clock: Callable[[], float]
) -> tuple[float, float]:
    """Seconds (by ``clock``) to attack all of ``x`` in batches, and the robust accuracy reached."""
    torch.manual_seed(0)
    if x.is_cuda:
        torch.cuda.synchronize()
    started = clock()
    outputs = [attack(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    if x.is_cuda:
        torch.cuda.synchronize()
    seconds = clock() - started
    with torch.no_grad():
        robust = sum(
            int((model(o).argmax(dim=1) == y[i * batch : (i + 1) * batch]).sum()) for i, o in enumerate(outputs)
        )
    return seconds, robust / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", default="mnist-linf", choices=sorted(TRACKS))
    parser.add_argument("--samples", type=int, default=None, help="evaluation samples (default: the track's)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: this process's CPU time, steadier on a busy CPU"
    )
    args = parser.parse_args()
    track, settings, device = TRACKS[args.track], Settings.from_env(), pick_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    model = reference_model(track, settings, device)
    shifted = ShiftedLogits(model).eval()
    x, y, _, _ = track.eval_set(settings.data_dir)
    x, y = x[: args.samples].to(device), y[: args.samples].to(device)
    eps, steps = track.eps, 40
    alpha = 2.5 * eps / steps
    cw = {"c": 1.0, "steps": 100, "lr": 0.01}
    rows: list[tuple[str, nn.Module, Attack, Attack]] = [
        ("FGSM", model, ours("fgsm", model, "linf", eps), torchattacks.FGSM(model, eps=eps)),
        (
            "PGD-40",
            model,
            ours("pgd", model, "linf", eps, steps=steps, rel_step=alpha / eps),
            torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True),
        ),
        (
            "PGD-40, no early stop",
            model,
            ours("pgd", model, "linf", eps, steps=steps, rel_step=alpha / eps, early_stop=False),
            torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True),
        ),
        (
            "CW-L2 (100 steps)",
            shifted,
            ours("cw-l2", shifted, "l2", 1e6, binary_steps=1, confidence=0.0, **cw),
            torchattacks.CW(shifted, kappa=0.0, **cw),
        ),
    ]
    with torch.no_grad():
        clean = (model(x).argmax(dim=1) == y).float().mean().item()
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    print(f"track {track.name}: {len(x)} samples, batch {track.batch_size}, eps {eps}, device {device}", end="")
    print(f" ({threads} threads)" if threads else "", f"; clean accuracy {clean:.3f}", end="")
    print(f"; {args.clock} clock, best of {args.repeat} runs")
    header = f"{'attack':24s} {'ours img/s':>11s} {'torchattacks img/s':>19s} {'ratio':>6s}"
    print(f"{header} {'robust acc (ours)':>18s} {'robust acc (torchattacks)':>26s}")
    for label, victim, mine, theirs in rows:
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        robust: dict[str, float] = {}
        for repeat in range(args.repeat):
            sides = (("ours", mine), ("theirs", theirs))
            for side, attack in sides if repeat % 2 == 0 else sides[::-1]:
                seconds, robust[side] = measure(attack, victim, x, y, track.batch_size, clocks[args.clock])
                times[side].append(seconds)
        speed = {side: len(x) / min(values) for side, values in times.items()}
        print(
            f"{label:24s} {speed['ours']:11.0f} {speed['theirs']:19.0f} {speed['ours'] / speed['theirs']:6.2f} "
            f"{robust['ours']:18.3f} {robust['theirs']:26.3f}"
        )


if __name__ == "__main__":
    main()
