"""The undefended baseline: the reference architecture trained on clean data only."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from arena import Defense, TrainContext, hookimpl


class Undefended(Defense):
    r"""Plain empirical risk minimisation, the baseline every defense is compared with.

    .. math:: \min_\theta\ \mathbb{E}_{(x, y)}\, L(f_\theta(x), y)   (cross-entropy, Adam)

    Trains ``ctx.make_model()`` for ``ctx.epochs`` epochs and stops early, with a log line, when
    ``ctx.time_budget`` seconds are spent.

    Paper: Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
    https://arxiv.org/abs/1412.6980 (the optimiser; the model is the track's reference architecture).

    Parameters (their values: the [params] of plugin.toml):
        lr: Adam's learning rate.
        batch_size: training batch size.

    Usage::

        model = Undefended().train(ctx)
    """

    def train(self, ctx: TrainContext) -> nn.Module:
        """Train the reference architecture on clean batches; return it in eval mode."""
        model = ctx.make_model()
        ctx.fit(model, lambda x, y: F.cross_entropy(model(x), y), lr=self.lr, batch_size=self.batch_size)
        return model.eval()


@hookimpl
def arena_defenses() -> list[type[Defense]]:
    """The undefended baseline, the only defense of this plugin."""
    return [Undefended]
