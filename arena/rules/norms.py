"""Per-sample norms of a batch, for plugin authors: ``from arena import l2_norms``."""

from __future__ import annotations

import torch


def l2_norms(v: torch.Tensor) -> torch.Tensor:
    """The l2 norm of each sample of the batch ``v`` (N, ...), shaped (N, 1, ..., 1) to broadcast against it:
    ``v / l2_norms(v).clamp_min(1e-12)`` is a batch of unit vectors."""
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
