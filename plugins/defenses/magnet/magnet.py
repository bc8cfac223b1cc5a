"""MagNet (Meng and Chen, 2017): detectors and reformers built from autoencoders."""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn

from arena import Defense, TrainContext, hookimpl


class Autoencoder(nn.Module):
    """MagNet's MNIST autoencoder: 3x3 sigmoid convolutions of ``width`` filters around a 2x2 average pooling."""

    def __init__(self, input_shape: tuple[int, ...], width: int = 8) -> None:
        super().__init__()
        channels, height, breadth = input_shape
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ELU(),
            nn.AvgPool2d(2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ELU(),
            nn.Upsample(size=(height, breadth)),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x``, in [0, 1]."""
        return self.net(x)


class MagNetModel(nn.Module):
    """The defended model: reformer (one autoencoder drawn per batch), then the classifier; and the detectors.

    ``forward`` draws one autoencoder per call from torch's global generator and classifies its
    reconstruction. When a gradient is asked for (``x`` requires it), the gradient is that of the mean
    reconstruction over all autoencoders, the expectation over the draw (a BPDA stand-in for the random
    choice); the value is always the drawn autoencoder's. ``reject`` is deterministic: an input is rejected
    when any autoencoder's mean L1 or L2 reconstruction error exceeds its threshold.
    """

    def __init__(self, classifier: nn.Module, autoencoders: list[Autoencoder], thresholds: torch.Tensor) -> None:
        super().__init__()
        self.classifier = classifier
        self.autoencoders = nn.ModuleList(autoencoders)
        self.register_buffer("thresholds", thresholds)

    def reform(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction by one autoencoder drawn at random (differentiable through their mean)."""
        drawn = self.autoencoders[int(torch.randint(len(self.autoencoders), ()))](x)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return drawn
        mean = torch.stack([autoencoder(x) for autoencoder in self.autoencoders]).mean(dim=0)
        return mean + (drawn - mean).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the reformed input."""
        return self.classifier(self.reform(x))

    def reconstruction_errors(self, x: torch.Tensor) -> torch.Tensor:
        """Mean L1 and mean squared reconstruction errors per input and autoencoder, (N, K, 2); differentiable."""
        errors = []
        for autoencoder in self.autoencoders:
            difference = (x - autoencoder(x)).flatten(1)
            errors.append(torch.stack([difference.abs().mean(dim=1), difference.pow(2).mean(dim=1)], dim=1))
        return torch.stack(errors, dim=1)

    def reject(self, x: torch.Tensor) -> torch.Tensor:
        """``True`` where any detector's reconstruction error exceeds its threshold."""
        with torch.no_grad():
            return (self.reconstruction_errors(x) > self.thresholds).flatten(1).any(dim=1)


class MagNet(Defense):
    r"""Autoencoders trained on clean data detect inputs far from the data manifold and reform those near it.

    .. math:: \mathrm{reject}(x) \iff \exists k, p:\ \|x - a_k(x)\|_p > \tau_{k,p}, \qquad
              f(x) = c(a_K(x)),\ K \sim \mathcal{U}\{1, \dots, n\} \text{ per batch}

    Trains the classifier ``c`` (``ctx.make_model()``) plainly for ``ctx.epochs`` epochs and ``autoencoders``
    denoising autoencoders ``a_k`` (Gaussian noise of deviation ``noise`` on the input, mean squared error)
    for ``ae_epoch_factor * ctx.epochs`` epochs each (at least one), on the training split less a held-out
    ``validation`` share. The thresholds ``tau`` are set on that clean validation share as the defense will see it
    (printed and photographed on a physical track: ``ctx.photograph``) so that it loses at most
    ``false_positive_rate`` of its inputs to the detectors (split evenly over them), both as published and under
    fresh draws of the track's secret distortion (``ctx.augment``; each threshold the larger of the two). The
    autoencoders differ by their initialisation; drawing one at random per batch is the paper's defense against gray-box
    attackers, so the defense is ``randomized``. Each phase stops early, with a log line, when
    ``ctx.time_budget`` is spent.

    White-box attackers get the model with the detectors (``reject`` and the differentiable
    ``reconstruction_errors``) and a gradient through the mean reconstruction (the BPDA stand-in for the
    random draw); Carlini and Wagner showed that attacks adapted this way defeat MagNet.

    Paper: Meng and Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", ACM CCS 2017,
    https://arxiv.org/abs/1705.09064; attacked by Carlini and Wagner, https://arxiv.org/abs/1711.08478.

    Parameters (their values: the [params] of plugin.toml):
        autoencoders: how many autoencoders to train and draw from.
        width: filters per convolution of each autoencoder.
        noise: deviation of the Gaussian noise added to the autoencoders' training inputs.
        false_positive_rate: share of clean validation inputs the detectors may reject.
        validation: share of the training split held out to set the thresholds.
        ae_epoch_factor: autoencoder epochs per epoch of the track.
        ae_lr: Adam's learning rate for the autoencoders.
        lr: Adam's learning rate for the classifier.
        batch_size: training batch size.

    Usage::

        model = MagNet().train(ctx)
    """

    randomized = True

    def train(self, ctx: TrainContext) -> nn.Module:
        """Train the classifier and the autoencoders, set the thresholds; return the :class:`MagNetModel`."""
        deadline = time.monotonic() + ctx.time_budget
        order = torch.randperm(len(ctx.x), generator=ctx.generator)
        held = max(1, int(self.validation * len(order)))
        split = dataclasses.replace(ctx, x=ctx.x[order[held:]], y=ctx.y[order[held:]])  # the training images left
        fit = {"batch_size": self.batch_size, "deadline": deadline}
        classifier = ctx.make_model()

        def classification_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(classifier(x), y)

        split.fit(classifier, classification_loss, lr=self.lr, name="classifier", **fit)
        classifier.eval()
        autoencoders = [Autoencoder(ctx.input_shape, self.width).to(ctx.device) for _ in range(self.autoencoders)]
        for k, ae in enumerate(autoencoders):

            def denoising_loss(x: torch.Tensor, _y: torch.Tensor, ae: nn.Module = ae) -> torch.Tensor:
                noise = torch.randn(x.shape, generator=ctx.generator).to(x.device)
                return F.mse_loss(ae((x + self.noise * noise).clamp(0.0, 1.0)), x)

            epochs = max(1, round(self.ae_epoch_factor * ctx.epochs))
            split.fit(ae, denoising_loss, lr=self.ae_lr, epochs=epochs, name=f"autoencoder {k}", **fit)
            ae.eval()
        model = MagNetModel(classifier, autoencoders, torch.zeros(self.autoencoders, 2, device=ctx.device)).eval()
        x_val = ctx.x[order[:held]]
        with torch.no_grad():  # as the defense will see them: published, and under draws of the secret distortion
            seen = [model.reconstruction_errors(ctx.photograph(x.to(ctx.device))) for x in (x_val, ctx.augment(x_val))]
        quantile = 1.0 - self.false_positive_rate / seen[0][0].numel()
        model.thresholds.copy_(torch.maximum(*(torch.quantile(errors, quantile, dim=0) for errors in seen)))
        ctx.log(f"thresholds at the {quantile:.5f} quantile of {held} validation inputs: {model.thresholds.tolist()}")
        return model


@hookimpl
def arena_defenses() -> list[type[Defense]]:
    """MagNet, the only defense of this plugin."""
    return [MagNet]
