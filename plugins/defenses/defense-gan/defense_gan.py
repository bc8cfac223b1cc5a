"""Defense-GAN (Samangouei et al., 2018): project every input onto the range of a generator."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from arena import Defense, TrainContext, hookimpl


class Generator(nn.Module):
    """An MLP generator with batch normalisation: ``latent`` -> 256 -> 512 -> an image in [0, 1]."""

    def __init__(self, input_shape: tuple[int, ...], latent: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent = latent
        self.net = nn.Sequential(
            nn.Linear(latent, 256),
            nn.BatchNorm1d(256),
            nn.LeakyReLU(0.2),
            nn.Linear(256, 512),
            nn.BatchNorm1d(512),
            nn.LeakyReLU(0.2),
            nn.Linear(512, math.prod(input_shape)),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``G(z)`` for latent codes ``z`` (N, latent)."""
        return self.net(z).view(len(z), *self.input_shape)


class Discriminator(nn.Sequential):
    """An MLP critic with spectral normalisation: an image -> 512 -> 256 -> one score (real or generated)."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        normalised = nn.utils.parametrizations.spectral_norm
        super().__init__(
            nn.Flatten(),
            normalised(nn.Linear(math.prod(input_shape), 512)),
            nn.LeakyReLU(0.2),
            normalised(nn.Linear(512, 256)),
            nn.LeakyReLU(0.2),
            normalised(nn.Linear(256, 1)),
        )


class DefenseGANModel(nn.Module):
    """The defended model: project the input onto the generator's range, then classify the projection.

    The projection ``G(z*)``, with ``z* = argmin_z ||G(z) - x||^2`` found by ``steps`` Adam steps from
    ``restarts`` random starts (drawn from torch's global generator: the model is randomized), is not
    differentiable with respect to ``x``. Its BPDA stand-in is the identity: the value is ``G(z*)``, the
    gradient is that of ``x`` itself (``G(z*)`` is close to ``x`` for natural images).
    """

    def __init__(self, generator: Generator, classifier: nn.Module, steps: int, restarts: int, lr: float) -> None:
        super().__init__()
        self.generator = generator
        self.classifier = classifier
        self.steps = steps
        self.restarts = restarts
        self.lr = lr

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``G(z*)`` for each image of ``x``: the best of ``restarts`` searches of ``steps`` Adam steps."""
        x = x.detach()
        n, restarts = len(x), self.restarts
        target = x.repeat(restarts, *([1] * (x.dim() - 1)))
        z = torch.randn(n * restarts, self.generator.latent, device=x.device).requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                loss = (self.generator(z) - target).pow(2).flatten(1).sum(dim=1)
                (z.grad,) = torch.autograd.grad(loss.sum(), z)
                optimizer.step()
        with torch.no_grad():
            images = self.generator(z)
            errors = (images - target).pow(2).flatten(1).sum(dim=1).view(restarts, n)
            best = errors.argmin(dim=0)
            return images.view(restarts, n, *x.shape[1:])[best, torch.arange(n, device=x.device)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the projection; the gradient passes straight through it (BPDA)."""
        return self.classifier(x + (self.project(x) - x).detach())


class DefenseGAN(Defense):
    r"""A GAN learns the clean data; each input is replaced by the nearest image the generator can make.

    .. math:: f(x) = c(G(z^*)), \qquad z^* = \arg\min_z \|G(z) - x\|_2^2
              \text{ (best of R runs of L gradient steps from random } z)

    Trains a GAN (:class:`Generator` and :class:`Discriminator`, MLPs, the hinge loss) for
    ``gan_epoch_factor * ctx.epochs`` epochs, then the classifier ``c`` (``ctx.make_model()``) on clean data for
    ``ctx.epochs`` epochs, and again for ``ctx.epochs`` epochs on the clean images and the reconstructions of
    ``reconstructed`` of them (the paper's classifier trained on reconstructed images). At inference,
    ``L = search_steps`` Adam steps of rate ``search_lr`` from ``R = restarts`` random latent codes find ``z*``;
    the random starts make the defense ``randomized``. The search is not differentiable; white-box attackers get
    its BPDA stand-in, the identity (see :class:`DefenseGANModel`), with which Athalye, Carlini and Wagner broke
    it. Each phase stops early, with a log line, when ``ctx.time_budget`` is spent.

    Paper: Samangouei, Kabkab and Chellappa, "Defense-GAN: Protecting Classifiers Against Adversarial Attacks
    Using Generative Models", ICLR 2018, https://arxiv.org/abs/1805.06605 (L = 200, R = 10 there; fewer
    here so that a match runs in minutes on a CPU); BPDA: https://arxiv.org/abs/1802.00420.

    Parameters (their values: the [params] of plugin.toml):
        latent: dimension of the latent code z.
        search_steps: L, gradient steps of the search for z*.
        restarts: R, random starts of the search.
        search_lr: Adam's rate in the search.
        gan_epoch_factor: GAN epochs per epoch of the track.
        gan_lr: Adam's rate for the GAN.
        reconstructed: how many training images the classifier also learns reconstructed.
        lr: Adam's rate for the classifier.
        batch_size: training batch size.

    Usage::

        model = DefenseGAN().train(ctx)
    """

    randomized = True

    def train(self, ctx: TrainContext) -> nn.Module:
        """Train the GAN, then the classifier on clean images and on reconstructions; return the model."""
        deadline = time.monotonic() + ctx.time_budget
        generator = Generator(ctx.input_shape, self.latent).to(ctx.device)
        self._train_gan(ctx, generator, deadline)
        generator.eval().requires_grad_(False)
        classifier = ctx.make_model()
        model = DefenseGANModel(generator, classifier, self.search_steps, self.restarts, self.search_lr)
        self._fit(ctx, classifier, ctx.x, ctx.y, None, "classifier on clean images", deadline)
        chosen = torch.randperm(len(ctx.x), generator=ctx.generator)[: self.reconstructed]
        x, y = ctx.x[chosen], ctx.y[chosen]
        reconstructions = []
        for start in range(0, len(x), 1000):
            if time.monotonic() > deadline:
                ctx.log(f"reconstructions: time budget of {ctx.time_budget:g} s spent: stopping")
                return model.eval()
            reconstructions.append(model.project(x[start : start + 1000].to(ctx.device)).cpu())
        if reconstructions:
            self._fit(ctx, classifier, x, y, torch.cat(reconstructions), "classifier on reconstructions", deadline)
        return model.eval()

    def _fit(
        self,
        ctx: TrainContext,
        classifier: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        reconstructions: torch.Tensor | None,
        name: str,
        deadline: float,
    ) -> None:
        """Adam for ``ctx.epochs`` epochs on ``(x, y)``, and on the reconstructions of ``x`` too when given."""

        def batches() -> Iterator[tuple[torch.Tensor, ...]]:
            for index in torch.randperm(len(x), generator=ctx.generator).split(self.batch_size):
                batch = (x, y) if reconstructions is None else (x, y, reconstructions)
                yield tuple(t[index].to(ctx.device) for t in batch)

        def loss_of(images: torch.Tensor, labels: torch.Tensor, rebuilt: torch.Tensor | None = None) -> torch.Tensor:
            loss = F.cross_entropy(classifier(images), labels)
            if rebuilt is not None:
                loss = (loss + F.cross_entropy(classifier(rebuilt), labels)) / 2
            return loss

        ctx.fit(classifier, loss_of, lr=self.lr, deadline=deadline, batches=batches, name=name)
        classifier.eval()

    def _train_gan(self, ctx: TrainContext, generator: Generator, deadline: float) -> None:
        """The hinge GAN game: D scores real images above 1 and generated ones below -1, G raises its scores."""
        discriminator = Discriminator(ctx.input_shape).to(ctx.device)
        g_optimizer = torch.optim.Adam(generator.parameters(), lr=self.gan_lr, betas=(0.5, 0.999))
        d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=self.gan_lr, betas=(0.5, 0.999))
        epochs = max(1, round(self.gan_epoch_factor * ctx.epochs))
        generator.train()
        for epoch in range(1, epochs + 1):
            for x, _ in ctx.batches(self.batch_size):
                if len(x) < 2:  # batch normalisation needs two images
                    continue
                if time.monotonic() > deadline:
                    ctx.log(f"GAN: time budget of {ctx.time_budget:g} s spent in epoch {epoch}/{epochs}: stopping")
                    return
                z = torch.randn(len(x), self.latent, generator=ctx.generator).to(ctx.device)
                fake = generator(z)
                d_loss = F.relu(1 - discriminator(x)).mean() + F.relu(1 + discriminator(fake.detach())).mean()
                d_optimizer.zero_grad(set_to_none=True)
                d_loss.backward()
                d_optimizer.step()
                g_loss = -discriminator(fake).mean()
                g_optimizer.zero_grad(set_to_none=True)
                g_loss.backward()
                g_optimizer.step()
            if epoch % max(1, epochs // 5) == 0 or epoch == epochs:
                ctx.log(f"GAN: epoch {epoch}/{epochs}: D loss {d_loss.item():.3f}, G loss {g_loss.item():.3f}")


@hookimpl
def arena_defenses() -> list[type[Defense]]:
    """Defense-GAN, the only defense of this plugin."""
    return [DefenseGAN]
