"""The referee's decisions: output checks, projection, norms, classification, per-sample records, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from arena.rules.referee import (
    GALLERY_SIZE,
    MalformedOutput,
    Verdict,
    check_output,
    classify,
    gallery,
    judge,
    metrics,
    perturbation_norms,
    project,
)


def images(n: int = 4, seed: int = 0, shape: tuple[int, ...] = (1, 4, 4)) -> torch.Tensor:
    """A seeded batch of images in [0.2, 0.8], so small perturbations stay inside [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(n, *shape, generator=generator)


def verdict(preds: list[list[int]], rejected: list[list[bool]] | None = None) -> Verdict:
    """A hand-made verdict: ``preds`` is (draws, N)."""
    p = torch.tensor(preds)
    r = torch.tensor(rejected) if rejected is not None else torch.zeros_like(p, dtype=torch.bool)
    return Verdict(p, r)


# --------------------------------------------------------------------------------------------------
# check_output
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "type_name"),
    [([[0.0]], "list"), (np.zeros((4, 1, 4, 4), dtype=np.float32), "ndarray"), (None, "NoneType")],
)
def test_check_output_rejects_what_is_not_a_tensor(output: object, type_name: str) -> None:
    with pytest.raises(MalformedOutput, match=f"returned {type_name}, not a torch.Tensor"):
        check_output(output, images())


@pytest.mark.parametrize("shape", [(4, 1, 4), (3, 1, 4, 4), (4, 1, 4, 5), (4, 16)])
def test_check_output_rejects_a_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(MalformedOutput, match=r"shape .*expected \(4, 1, 4, 4\)"):
        check_output(torch.zeros(shape), images())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_check_output_rejects_a_non_floating_dtype(dtype: torch.dtype) -> None:
    with pytest.raises(MalformedOutput, match="dtype") as info:
        check_output(torch.zeros(4, 1, 4, 4, dtype=dtype), images())
    assert str(dtype) in str(info.value) and "expected a floating dtype" in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_output_rejects_nan_and_inf(bad: float) -> None:
    x = images()
    output = x.clone()
    output[1, 0, 2, 2] = bad
    output[3, 0, 0, 0] = bad
    with pytest.raises(MalformedOutput, match="NaN or infinite values in 2 samples"):
        check_output(output, x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.float32])
def test_check_output_accepts_floats_as_float32(dtype: torch.dtype) -> None:
    x = images()
    output = x.to(dtype).requires_grad_(True)
    checked = check_output(output, x)
    assert checked.dtype == torch.float32 and not checked.requires_grad
    assert torch.allclose(checked, x, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# project
# --------------------------------------------------------------------------------------------------


def test_project_linf_clamps_and_flags_exactly_the_samples_that_moved() -> None:
    x = images(5)
    eps = 0.1
    x_adv = x.clone()
    x_adv[1, 0, 0, 0] += 0.3  # beyond eps
    x_adv[2] = x[2] - 0.05  # inside the ball
    x_adv[3, 0, 1, 1] = 1.5  # outside [0, 1] and beyond eps
    x_adv[4, 0, 2, 2] = x[4, 0, 2, 2] - 0.5  # beyond eps
    projected, moved = project(x_adv, x, "linf", eps)
    assert moved.tolist() == [False, True, False, True, True]
    assert ((projected - x).abs() <= eps + 1e-6).all()
    assert projected.min() >= 0 and projected.max() <= 1
    assert torch.allclose(projected[1, 0, 0, 0], x[1, 0, 0, 0] + eps)
    assert torch.allclose(projected[4, 0, 2, 2], x[4, 0, 2, 2] - eps)
    assert torch.equal(projected[[0, 2]], x_adv[[0, 2]])


def test_project_linf_clips_to_the_unit_interval() -> None:
    x = torch.tensor([[[[0.98, 0.01]]], [[[0.5, 0.5]]]])
    x_adv = torch.tensor([[[[1.05, -0.02]]], [[[0.5, 0.5]]]])
    projected, moved = project(x_adv, x, "linf", 0.1)
    assert torch.equal(projected[0], torch.tensor([[[1.0, 0.0]]]))
    assert moved.tolist() == [True, False]


@pytest.mark.parametrize("eps", [0.1, 0.15, 8 / 255, 0.031])
def test_project_linf_has_no_false_violations_at_the_boundary(eps: float) -> None:
    x = images(64, seed=1)
    signs = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5, -1.0, 1.0)
    x_adv = x + eps * signs  # exactly on the boundary of the ball, up to float32 round-off
    projected, moved = project(x_adv, x, "linf", eps)
    assert not moved.any()
    assert (projected - x_adv).abs().max() <= 1e-6


def test_project_l2_rescales_only_samples_beyond_eps() -> None:
    x = images(4, seed=3)
    eps = 1.0
    generator = torch.Generator().manual_seed(4)
    direction = torch.randn(x.shape, generator=generator)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    scale = torch.tensor([0.5, 1.0, 1.5, 3.0]).view(-1, 1, 1, 1)
    x_adv = x + 0.1 * direction * scale  # norms 0.05, 0.1, 0.15, 0.3
    projected, moved = project(x_adv, x, "l2", 0.1 * eps)
    norms = (projected - x).flatten(1).norm(dim=1)
    assert moved.tolist() == [False, False, True, True]
    assert (norms <= 0.1 + 1e-5).all()
    assert torch.allclose(norms[2:], torch.tensor([0.1, 0.1]), atol=1e-5)
    assert torch.equal(projected[:2], x_adv[:2])
    # the direction of a rescaled sample is kept
    cosine = torch.nn.functional.cosine_similarity((projected - x).flatten(1), (x_adv - x).flatten(1))
    assert torch.allclose(cosine, torch.ones(4), atol=1e-5)


def test_project_l2_many_samples_never_exceed_eps() -> None:
    x = images(64, seed=5)
    x_adv = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))).clamp(0, 1)
    eps = 1.5
    projected, moved = project(x_adv, x, "l2", eps)
    norms = (projected - x).flatten(1).norm(dim=1)
    before = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= eps + 1e-5).all()
    assert torch.equal(moved, before > eps + 1e-6)


def test_project_l0_keeps_the_largest_changes() -> None:
    x = torch.full((2, 1, 2, 3), 0.5)
    delta = torch.tensor([[0.1, -0.4, 0.05, 0.3, -0.2, 0.01], [0.0, 0.2, 0.0, 0.0, -0.1, 0.0]])
    x_adv = x + delta.view(2, 1, 2, 3)
    projected, moved = project(x_adv, x, "l0", 3)
    kept = (projected - x).flatten(1)
    expected = torch.tensor([[0.0, -0.4, 0.0, 0.3, -0.2, 0.0], [0.0, 0.2, 0.0, 0.0, -0.1, 0.0]])
    assert torch.allclose(kept, expected, atol=1e-6)
    assert moved.tolist() == [True, False]


def test_project_rejects_an_unknown_norm() -> None:
    x = images()
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        project(x, x, "l1", 0.1)


# --------------------------------------------------------------------------------------------------
# perturbation_norms
# --------------------------------------------------------------------------------------------------


def test_perturbation_norms_on_a_hand_made_example() -> None:
    x = torch.zeros(2, 1, 2, 2)
    x_adv = torch.tensor([[[[0.3, 0.0], [0.0, -0.4]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    norms = perturbation_norms(x_adv, x)
    assert norms["l0"].tolist() == [2.0, 0.0]
    assert torch.allclose(norms["l2"], torch.tensor([0.5, 0.0]))
    assert torch.allclose(norms["linf"], torch.tensor([0.4, 0.0]))
    tiny = perturbation_norms(x + 1e-7, x)  # round-off is not a changed value
    assert tiny["l0"].tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------------


class Brightness(nn.Module):
    """Class 1 when the image's mean is above 0.5, else class 0 (three classes, the third never wins)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1) - 0.5
        return torch.stack([-m, m, torch.full_like(m, -10.0)], dim=1)


class Detector(Brightness):
    """:class:`Brightness` with a detector rejecting images with any pixel above 0.95."""

    def reject(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).amax(1) > 0.95


class Coin(nn.Module):
    """A randomized defense: each draw, each sample is classified correctly with probability 1/2."""

    def __init__(self, labels: torch.Tensor, seed: int = 0) -> None:
        super().__init__()
        self.labels = labels
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right = torch.rand(len(x), generator=self.generator) < 0.5
        preds = torch.where(right, self.labels[: len(x)], (self.labels[: len(x)] + 1) % 3)
        self.history.append(preds)
        return nn.functional.one_hot(preds, 3).float()


def test_classify_a_deterministic_model_in_batches() -> None:
    x = torch.stack([torch.full((1, 2, 2), v) for v in (0.1, 0.9, 0.4, 0.6, 0.7)])
    result = classify(Brightness(), x, batch_size=2)
    assert result.preds.tolist() == [[0, 1, 0, 1, 1]]
    assert result.rejected.tolist() == [[False] * 5]
    twice = classify(Brightness(), x, draws=2, batch_size=500)
    assert twice.preds.shape == (2, 5) and torch.equal(twice.preds[0], twice.preds[1])


def test_a_detector_rejection_counts_for_the_defense_and_against_clean_accuracy() -> None:
    y = torch.tensor([0, 1, 1, 0])
    x = torch.stack([torch.full((1, 2, 2), v) for v in (0.2, 0.7, 0.7, 0.3)])
    x[1, 0, 0, 0] = 0.99  # a clean input the detector rejects
    x_adv = x.clone()
    x_adv[2] = 0.3  # broken: classified as 0
    x_adv[3] = 0.8  # broken, but ...
    x_adv[3, 0, 0, 0] = 0.99  # ... rejected by the detector
    model = Detector()
    clean, adv = classify(model, x), classify(model, x_adv)
    assert clean.rejected.tolist() == [[False, True, False, False]]
    assert adv.rejected.tolist() == [[False, True, False, True]]
    records = judge(x, y, x_adv, torch.zeros(4, dtype=torch.bool), clean, adv, None)
    assert records["clean_correct"].tolist() == [True, False, True, True]
    assert records["clean_rejected"].tolist() == [False, True, False, False]
    assert records["adv_rejected"].tolist() == [False, True, False, True]
    assert records["adv_correct"].tolist() == [True, True, False, False]
    assert records["survived"].tolist() == [True, False, False, True]
    assert records["success"].tolist() == [False, False, True, False]
    result = metrics(records, targeted=False, queries=0, seconds=0.0, draws=1)
    assert result["clean_accuracy"] == 0.75
    assert result["robust_accuracy"] == 0.5
    assert result["success_rate"] == pytest.approx(1 / 3)


def test_a_randomized_defense_survives_only_if_it_survives_every_draw() -> None:
    n, draws = 64, 5
    y = torch.arange(n) % 3
    x = images(n, seed=7)
    clean = verdict([y.tolist()] * draws)  # right on every clean draw
    model = Coin(y, seed=8)
    adv = classify(model, x, draws=draws)
    assert len(model.history) == draws
    right = torch.stack(model.history) == y
    assert torch.equal(adv.preds, torch.stack(model.history))
    # the draws differ: some samples are right in some draws and wrong in others
    assert (right.any(0) & ~right.all(0)).sum() > n // 2
    records = judge(x, y, x, torch.zeros(n, dtype=torch.bool), clean, adv, None)
    assert records["survived"].tolist() == right.all(0).tolist()
    assert records["success"].tolist() == (~right.all(0)).tolist()
    assert records["survived"].sum() < right.any(0).sum()


def test_clean_accuracy_of_a_randomized_defense_is_a_majority_over_draws() -> None:
    y = torch.tensor([0, 0, 0])
    x = torch.zeros(3, 1, 2, 2)
    # sample 0 right in 3 of 5 draws, sample 1 in 2 of 5, sample 2 in all
    clean = verdict([[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 1, 0]])
    adv = verdict([[0, 0, 0]] * 5)
    records = judge(x, y, x, torch.zeros(3, dtype=torch.bool), clean, adv, None)
    assert records["clean_correct"].tolist() == [True, False, True]
    assert records["survived"].tolist() == [True, False, True]


# --------------------------------------------------------------------------------------------------
# judge, metrics, gallery
# --------------------------------------------------------------------------------------------------


def test_judge_and_metrics_untargeted() -> None:
    y = torch.tensor([0, 1, 2, 3, 4])
    x = torch.zeros(5, 1, 2, 2)
    x_adv = x.clone()
    x_adv[1, 0, 0, 0] = 0.2  # broken: l0 1, l2 0.2, linf 0.2
    x_adv[3, 0, 0, :] = 0.3  # broken: l0 2, l2 0.3*sqrt(2), linf 0.3
    x_adv[4, 0, 1, 1] = 0.9  # broken, but wrong when clean: not a success
    moved = torch.tensor([False, True, False, False, True])
    clean = verdict([[0, 1, 2, 3, 0]])
    adv = verdict([[0, 2, 2, 0, 1]])
    records = judge(x, y, x_adv, moved, clean, adv, None)
    assert records["label"].tolist() == [0, 1, 2, 3, 4]
    assert records["target"].tolist() == [-1] * 5
    assert records["clean_pred"].tolist() == [0, 1, 2, 3, 0]
    assert records["adv_pred"].tolist() == [0, 2, 2, 0, 1]
    assert records["clean_correct"].tolist() == [True, True, True, True, False]
    assert records["survived"].tolist() == [True, False, True, False, False]
    assert records["success"].tolist() == [False, True, False, True, False]
    assert records["target_hit"].tolist() == [False] * 5
    assert records["violated"].tolist() == moved.tolist()
    assert records["l0"].tolist() == [0, 1, 0, 2, 1]
    assert all(isinstance(v, np.ndarray) for v in records.values())

    result = metrics(records, targeted=False, queries=50, seconds=1.5, draws=1)
    assert result["n"] == 5
    assert result["clean_accuracy"] == pytest.approx(0.8)
    assert result["robust_accuracy"] == pytest.approx(0.4)
    assert result["success_rate"] == pytest.approx(0.5)
    assert result["target_hit_rate"] is None
    assert result["violations"] == 2
    # mean norms over the successful samples (1 and 3) only, not over sample 4
    assert result["mean_l0"] == pytest.approx(1.5)
    assert result["mean_l2"] == pytest.approx((0.2 + 0.3 * 2**0.5) / 2, abs=1e-6)
    assert result["mean_linf"] == pytest.approx(0.25, abs=1e-6)
    assert result["queries"] == 50 and result["queries_per_sample"] == 10.0
    assert result["attack_seconds"] == 1.5 and result["draws"] == 1


def test_judge_and_metrics_targeted() -> None:
    y = torch.tensor([0, 1, 2, 3])
    targets = torch.tensor([5, 5, 5, 5])
    x = torch.zeros(4, 1, 2, 2)
    x_adv = x + 0.1
    clean = verdict([[0, 1, 2, 0]])
    adv = verdict([[5, 7, 2, 5]])  # 0: target hit; 1: broken, target missed; 2: survived; 3: hit, wrong when clean
    records = judge(x, y, x_adv, torch.zeros(4, dtype=torch.bool), clean, adv, targets)
    assert records["target"].tolist() == [5, 5, 5, 5]
    assert records["target_hit"].tolist() == [True, False, False, True]
    assert records["success"].tolist() == [True, False, False, False]
    assert records["survived"].tolist() == [False, False, True, False]
    result = metrics(records, targeted=True, queries=0, seconds=0.0, draws=1)
    assert result["success_rate"] == pytest.approx(1 / 3)
    assert result["target_hit_rate"] == pytest.approx(1 / 3)
    assert result["robust_accuracy"] == 0.25
    assert result["mean_linf"] == pytest.approx(0.1)


def test_a_rejected_adversarial_input_does_not_hit_the_target() -> None:
    y, targets = torch.tensor([0]), torch.tensor([1])
    x = torch.zeros(1, 1, 2, 2)
    records = judge(x, y, x, torch.zeros(1, dtype=torch.bool), verdict([[0]]), verdict([[1]], [[True]]), targets)
    assert records["target_hit"].tolist() == [False]
    assert records["survived"].tolist() == [True] and records["success"].tolist() == [False]


def test_metrics_without_successes_or_clean_samples() -> None:
    y = torch.tensor([0, 1])
    x = torch.zeros(2, 1, 2, 2)
    records = judge(x, y, x, torch.zeros(2, dtype=torch.bool), verdict([[1, 0]]), verdict([[1, 0]]), None)
    result = metrics(records, targeted=True, queries=0, seconds=0.0, draws=1)
    assert result["clean_accuracy"] == 0.0 and result["robust_accuracy"] == 0.0
    assert result["success_rate"] == 0.0 and result["target_hit_rate"] is None
    assert result["mean_l0"] is None and result["mean_l2"] is None and result["mean_linf"] is None


def test_gallery_puts_successful_samples_first() -> None:
    n = 12
    y = torch.zeros(n, dtype=torch.long)
    x = torch.linspace(0, 1, n).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    x_adv = (x + 0.5).clamp(0, 1)
    adv_preds = [0] * n
    for i in (3, 7, 10):
        adv_preds[i] = 1
    records = judge(x, y, x_adv, torch.zeros(n, dtype=torch.bool), verdict([[0] * n]), verdict([adv_preds]), None)
    shown = gallery(x, x_adv, records)
    assert len(shown["position"]) == GALLERY_SIZE == 8
    assert shown["position"].tolist() == [3, 7, 10, 0, 1, 2, 4, 5]
    assert shown["clean"].dtype == np.uint8 and shown["adversarial"].dtype == np.uint8
    assert shown["clean"].shape == (GALLERY_SIZE, 1, 2, 2)
    assert shown["clean"][0, 0, 0, 0] == round(3 / 11 * 255)
    assert shown["adversarial"][0, 0, 0, 0] == round(min(3 / 11 + 0.5, 1) * 255)
    assert shown["clean"][3, 0, 0, 0] == 0 and shown["adversarial"][2].max() == 255
    assert shown["adv_pred"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert shown["label"].tolist() == [0] * GALLERY_SIZE
    assert shown["clean_pred"].tolist() == [0] * GALLERY_SIZE


def test_gallery_of_a_small_batch() -> None:
    y = torch.tensor([0, 1])
    x = torch.zeros(2, 1, 2, 2)
    records = judge(x, y, x, torch.zeros(2, dtype=torch.bool), verdict([[0, 1]]), verdict([[0, 0]]), None)
    shown = gallery(x, x, records)
    assert shown["position"].tolist() == [1, 0]
    assert shown["adversarial"].shape == (2, 1, 2, 2)
