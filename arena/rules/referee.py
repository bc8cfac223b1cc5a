"""The referee: checks an attack's output, enforces the budget, classifies, and records the outcome.

This is the arena's own code, never a plugin's. Every decision it makes is recorded: samples it had
to clip or project count as violations, and a malformed output fails the match with its reason.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

#: bump when judging changes: results are cached under it (3: mixed judging batches, blame by whose code ran)
REFEREE_VERSION = "3"
#: slack for floating-point round-off when deciding that a sample broke the budget
TOLERANCE = 1e-5
GALLERY_SIZE = 8


class MalformedOutput(ValueError):
    """An attack returned something the referee cannot judge."""


def check_output(output: Any, x: torch.Tensor) -> torch.Tensor:
    """The attack's output as a float32 tensor like ``x``, or :class:`MalformedOutput` saying why."""
    if not isinstance(output, torch.Tensor):
        raise MalformedOutput(f"the attack returned {type(output).__name__}, not a torch.Tensor")
    if tuple(output.shape) != tuple(x.shape):
        raise MalformedOutput(f"the attack returned shape {tuple(output.shape)}, expected {tuple(x.shape)}")
    if not output.dtype.is_floating_point:
        raise MalformedOutput(f"the attack returned dtype {output.dtype}, expected a floating dtype")
    if output.device != x.device:
        raise MalformedOutput(f"the attack returned a tensor on {output.device}, expected {x.device}")
    output = output.detach().to(torch.float32)
    bad = (~torch.isfinite(output)).flatten(1).any(1)
    if bad.any():
        raise MalformedOutput(f"the attack returned NaN or infinite values in {int(bad.sum())} samples")
    return output


def project(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip to [0, 1] and project onto the eps-ball around ``x``; also return which samples moved."""
    delta = x_adv.clamp(0, 1) - x
    flat = delta.flatten(1)
    if norm == "linf":
        flat = flat.clamp(-eps, eps)
    elif norm == "l2":
        norms = flat.norm(dim=1, keepdim=True)
        flat = flat * torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
    elif norm == "l0":
        keep = int(eps)
        if keep < flat.shape[1]:
            smallest = flat.abs().topk(flat.shape[1] - keep, dim=1, largest=False).indices
            flat = flat.scatter(1, smallest, 0.0)
    else:
        raise ValueError(f"unknown norm {norm!r}")
    projected = (x + flat.view_as(x)).clamp(0, 1)
    moved = (projected - x_adv).flatten(1).abs().amax(dim=1) > TOLERANCE
    return projected, moved


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """``x`` in [0, 1] rounded to the nearest of ``levels`` evenly spaced grey levels."""
    steps = levels - 1
    return torch.round(x.clamp(0, 1) * steps) / steps


def quantize_within(x_adv: torch.Tensor, x: torch.Tensor, levels: int, norm: str, eps: float) -> torch.Tensor:
    """``x_adv`` (inside the eps-ball around ``x``, which lies on the grid) moved onto the grid, still inside.

    Values round to the nearest level; where that would leave the ball (a pixel under L-inf, a whole
    sample under L2) they round towards the clean value instead, which never lengthens the perturbation.
    Rounding never changes a value that equals the clean one, so an L0 count never grows.
    """
    steps = levels - 1
    clean = torch.round(x * steps)
    delta = x_adv * steps - clean
    nearest, toward = (clean + torch.round(delta)) / steps, (clean + torch.trunc(delta)) / steps
    if norm == "linf":
        return torch.where((nearest - x).abs() > eps + TOLERANCE, toward, nearest)
    if norm == "l2":
        outside = (nearest - x).flatten(1).norm(dim=1) > eps + TOLERANCE
        return torch.where(outside.view(-1, *[1] * (x.dim() - 1)), toward, nearest)
    return nearest


def perturbation_norms(x_adv: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample L0 (changed values), L2 and L-inf norms of the perturbation."""
    delta = (x_adv - x).flatten(1)
    return {
        "l0": (delta.abs() > TOLERANCE).sum(1).float(),
        "l2": delta.norm(dim=1),
        "linf": delta.abs().amax(dim=1),
    }


@dataclass
class Verdict:
    """How the defended model judged a batch over ``draws`` draws: predictions and rejections."""

    preds: torch.Tensor  # (draws, N)
    rejected: torch.Tensor  # (draws, N) bool


@torch.no_grad()
def classify(model: nn.Module, x: torch.Tensor, draws: int = 1, batch_size: int = 500) -> Verdict:
    """Classify ``x`` with the defended model (and its ``reject`` detector) ``draws`` times.

    A randomized defense draws from torch's global generator. Every sandboxed process starts from the
    same generator state (they are forked from one server), which an attack could read; so the draws
    here come from a fresh seed out of the operating system's entropy, and the caller's state is restored.
    """
    reject = getattr(model, "reject", None)
    preds, rejected = [], []
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(secrets.randbits(63))
        for _ in range(draws):
            p, r = [], []
            for start in range(0, len(x), batch_size):
                batch = x[start : start + batch_size]
                p.append(model(batch).argmax(dim=1))
                r.append(reject(batch).bool() if callable(reject) else torch.zeros(len(batch), dtype=torch.bool))
            preds.append(torch.cat(p))
            rejected.append(torch.cat(r).to(preds[-1].device))
    return Verdict(torch.stack(preds), torch.stack(rejected))


def judge(
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    moved: torch.Tensor,
    clean: Verdict,
    adv: Verdict,
    targets: torch.Tensor | None,
) -> dict[str, np.ndarray]:
    """Per-sample records (see docs/architecture.md).

    Clean: correct and not rejected in most draws. Adversarial: the sample survives only if it
    survives every draw (classified correctly or rejected), as worst-case evaluation requires.
    """
    clean_ok_draws = (clean.preds == y) & ~clean.rejected
    clean_correct = clean_ok_draws.float().mean(0) > 0.5
    adv_ok_draws = (adv.preds == y) | adv.rejected
    survived = clean_correct & adv_ok_draws.all(0)
    if targets is not None:
        target_hit = ((adv.preds == targets) & ~adv.rejected).all(0)
        success = clean_correct & target_hit
    else:
        target_hit = torch.zeros_like(survived)
        success = clean_correct & ~survived
    norms = perturbation_norms(x_adv, x)
    records = {
        "label": y,
        "target": targets if targets is not None else torch.full_like(y, -1),
        "clean_pred": clean.preds[0],
        "adv_pred": adv.preds[0],
        "clean_correct": clean_correct,
        "clean_rejected": clean.rejected.any(0),
        "adv_correct": (adv.preds == y).all(0),
        "adv_rejected": adv.rejected.any(0),
        "survived": survived,
        "success": success,
        "target_hit": target_hit,
        "violated": moved,
        **norms,
    }
    return {name: value.detach().cpu().numpy() for name, value in records.items()}


def metrics(records: dict[str, np.ndarray], targeted: bool, queries: int, seconds: float, draws: int) -> dict:
    """Match metrics over the per-sample records (see docs/architecture.md)."""
    n = len(records["label"])
    clean = records["clean_correct"]
    success = records["success"]

    def mean_over(values: np.ndarray, mask: np.ndarray) -> float | None:
        return float(values[mask].mean()) if mask.any() else None

    return {
        "n": n,
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": float(records["survived"].mean()),
        "success_rate": float(success[clean].mean()) if clean.any() else 0.0,
        "target_hit_rate": float(records["target_hit"][clean].mean()) if targeted and clean.any() else None,
        "violations": int(records["violated"].sum()),
        "mean_l0": mean_over(records["l0"], success),
        "mean_l2": mean_over(records["l2"], success),
        "mean_linf": mean_over(records["linf"], success),
        "queries": queries,
        "queries_per_sample": queries / n if n else 0.0,
        "attack_seconds": seconds,
        "draws": draws,
    }


def gallery(x: torch.Tensor, x_adv: torch.Tensor, records: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A few samples for the board: clean and adversarial images (uint8) and both predictions.

    Successful samples come first; the perturbation is shown amplified by the board.
    """
    order = np.argsort(~records["success"], kind="stable")[:GALLERY_SIZE]
    index = torch.from_numpy(order)

    def as_uint8(images: torch.Tensor) -> np.ndarray:
        return (images[index].cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    return {
        "position": order,
        "clean": as_uint8(x),
        "adversarial": as_uint8(x_adv),
        "label": records["label"][order],
        "clean_pred": records["clean_pred"][order],
        "adv_pred": records["adv_pred"][order],
    }
