"""The one-pixel attack of Su, Vargas and Sakurai (2019): differential evolution with queries only."""

from __future__ import annotations

import torch

from arena import Attack, Budget, Target, hookimpl


class OnePixel(Attack):
    r"""Differential evolution over candidate perturbations of ``k`` pixels, each a (row, column, value) tuple.

    .. math:: c_i^{g+1} = c_{r_1}^{g} + F\,(c_{r_2}^{g} - c_{r_3}^{g}),\quad
              c_i \leftarrow c_i^{g+1}\ \text{if}\ p(y \mid x \oplus c_i^{g+1}) < p(y \mid x \oplus c_i)

    ``x (+) c`` writes the candidate's ``k`` pixels into ``x``; ``r1, r2, r3`` are distinct random members of the
    population; ``F = mutation``; there is no crossover, as in the paper. Each sample has its own population of
    ``popsize`` candidates, with coordinates drawn uniformly and values from ``N(0.5, 0.5)`` clipped to [0, 1].
    Only ``target.query`` is used (probabilities), so it plays under every threat model. The l0 budget ``eps``
    counts changed values, so ``k = eps // channels`` pixels. One query checks the clean image first (a sample
    already misclassified costs nothing more); then the initial population and as many generations as
    ``budget.max_queries`` allows, never more than ``target.queries_left``. A sample stops as soon as one of its
    candidates is misclassified; otherwise it ends with its fittest candidate.

    Paper: Su, Vargas and Sakurai, "One Pixel Attack for Fooling Deep Neural Networks", IEEE Transactions on
    Evolutionary Computation 2019, https://arxiv.org/abs/1710.08864

    Parameters (their values: the [params] of plugin.toml):
        popsize: candidates per sample.
        mutation: the differential weight F.

    Usage::

        x_adv = OnePixel().run(target, x, y, budget)   # budget.norm == "l0"
    """

    norms = ("l0",)
    threats = ("white-box", "gray-box", "black-box")
    targeted = False

    def check_params(self) -> None:
        """``popsize >= 4`` and ``mutation > 0``."""
        if self.popsize < 4 or self.mutation <= 0:
            raise ValueError(
                f"popsize must be at least 4 and mutation positive, not {self.popsize} and {self.mutation}"
            )

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """Differential evolution for every sample of the batch at once, within the query budget."""
        n, channels, height, width = x.shape
        pixels = int(budget.eps) // channels
        size = min(self.popsize, budget.max_queries - 1)
        x_adv = x.detach().clone()
        if pixels < 1 or size < 4:
            return x_adv
        used = torch.zeros(n, dtype=torch.long, device=x.device)

        def ask(rows: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """Query the candidates of the rows whose budget allows them; their positions, images and probs."""
            k = candidates.shape[1]
            fits = (used[rows] + k <= budget.max_queries).nonzero().squeeze(1)[: max(target.queries_left, 0) // k]
            images = self._apply(x[rows[fits]], candidates[fits], width)
            if len(fits) == 0:
                return fits, images, images.new_zeros(0, 0, target.num_classes)
            used[rows[fits]] += k
            return fits, images, target.query(images).to(x.device).view(len(fits), k, -1)

        everyone = torch.arange(n, device=x.device)
        clean = torch.zeros(n, 1, 0, 2 + channels, device=x.device)
        asked, _, probs = ask(everyone, clean)
        alive = torch.zeros(n, dtype=torch.bool, device=x.device)
        alive[asked] = probs[:, 0].argmax(dim=1) == y[asked]

        generator = budget.generator
        population = torch.rand(n, size, pixels, 2 + channels, generator=generator, device=generator.device)
        noise = torch.randn(n, size, pixels, channels, generator=generator, device=generator.device)
        population[..., 2:] = (0.5 + 0.5 * noise).clamp_(0.0, 1.0)
        population = population.to(x.device)
        population[..., 0] *= height - 1
        population[..., 1] *= width - 1
        fitness = torch.full((n, size), torch.inf, device=x.device)
        best_fit = torch.full((n,), torch.inf, device=x.device)
        limits = torch.tensor([height - 1, width - 1], dtype=population.dtype, device=x.device)

        first = True
        while True:
            rows = alive.nonzero().squeeze(1)
            if len(rows) == 0:
                break
            if first:
                children = population[rows]
            else:
                picks = torch.rand(len(rows), size, size, generator=generator, device=generator.device)
                r1, r2, r3 = picks.argsort(dim=2)[..., :3].to(x.device).unbind(dim=2)
                parents = population[rows]
                pick = torch.arange(len(rows), device=x.device)[:, None]
                children = parents[pick, r1] + self.mutation * (parents[pick, r2] - parents[pick, r3])
                children[..., :2] = torch.minimum(children[..., :2].clamp_(min=0.0), limits)
                children[..., 2:].clamp_(0.0, 1.0)
            answered, images, probs = ask(rows, children)
            alive[rows] = False
            if len(answered) == 0:
                break
            rows, children = rows[answered], children[answered]
            p_true = probs.gather(2, y[rows, None, None].expand(-1, size, 1)).squeeze(2)
            better = p_true < fitness[rows]
            population[rows] = torch.where(better[..., None, None], children, population[rows])
            fitness[rows] = torch.where(better, p_true, fitness[rows])
            fooled = probs.argmax(dim=2) != y[rows, None]
            broken = fooled.any(dim=1)
            best, best_at = p_true.min(dim=1)
            improved = best < best_fit[rows]
            best_fit[rows] = torch.where(improved, best, best_fit[rows])
            # a sample keeps the image of its fittest candidate so far, or the first one that fooled the model
            winner = torch.where(broken, fooled.float().argmax(dim=1), best_at)
            chosen = images.view(len(rows), size, *x.shape[1:])[torch.arange(len(rows), device=x.device), winner]
            x_adv[rows] = torch.where((broken | improved).view(-1, 1, 1, 1), chosen, x_adv[rows])
            alive[rows] = ~broken & (used[rows] + size <= budget.max_queries)
            first = False
        return x_adv

    @staticmethod
    def _apply(x: torch.Tensor, candidates: torch.Tensor, width: int) -> torch.Tensor:
        """Images ``(r * k, C, H, W)``: each of the ``k`` candidates of a row written into that row's image."""
        r, k, pixels, _ = candidates.shape
        channels = x.shape[1]
        images = x[:, None].expand(r, k, *x.shape[1:]).reshape(r * k, channels, x.shape[2:].numel()).clone()
        coords = candidates[..., :2].round().long()
        index = (coords[..., 0] * width + coords[..., 1]).view(r * k, 1, pixels).expand(-1, channels, -1)
        values = candidates[..., 2:].reshape(r * k, pixels, channels).transpose(1, 2).to(x.dtype)
        # a pixel drawn twice takes the larger value: deterministic on every device
        images.scatter_reduce_(2, index, values, reduce="amax", include_self=False)
        return images.view(r * k, *x.shape[1:])


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """The one-pixel attack, the only attack of this plugin."""
    return [OnePixel]
