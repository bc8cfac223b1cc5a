"""The print-and-photo simulation of physical tracks: its draws, its ranges, and the tracks that use it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from arena.rules import evaluation
from arena.rules.hookspecs import TrainContext
from arena.rules.physical import PrintAndPhoto, photograph
from arena.rules.tracks import TRACKS, TrackError, load_tracks
from leaderboard import create_app


def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(6, 1, 28, 28, generator=generator) > 0.7).float()


def test_a_seed_fixes_every_images_draw_and_another_seed_draws_anew() -> None:
    x, ranges = images(), PrintAndPhoto()
    first = photograph(x, 11, ranges, 256)
    assert torch.equal(first, photograph(x, 11, ranges, 256))
    assert not torch.equal(first, photograph(x, 12, ranges, 256))
    assert not torch.equal(first, x) and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first * 255, torch.round(first * 255))  # on the grid


def test_each_step_moves_the_image_and_none_is_a_no_op_when_its_range_is_zero() -> None:
    x = images()
    still = PrintAndPhoto(
        rotate=0, scale=0, shift=0, blur=0.0001, contrast=0, brightness=0, noise=0, jpeg_low=100, jpeg_high=100
    )
    assert (photograph(x, 3, still, 256) - x).abs().max() <= 0.06  # JPEG at quality 100 only
    for step, size in {
        "rotate": 5.0,
        "shift": 0.1,
        "blur": 1.5,
        "contrast": 0.3,
        "brightness": 0.3,
        "noise": 0.1,
    }.items():
        moved = dataclasses.replace(still, **{step: size})
        assert (photograph(x, 3, moved, 256) - x).abs().mean() > (photograph(x, 3, still, 256) - x).abs().mean(), step


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"focus": 1.0}, "unknown parameter(s) ['focus']"),
        ({"blur": -1}, "photo.blur must be a number >= 0"),
        ({"noise": "much"}, "photo.noise must be a number >= 0"),
        ({"jpeg_low": 95, "jpeg_high": 80}, "1 <= jpeg_low <= jpeg_high <= 100"),
    ],
)
def test_wrong_ranges_are_named(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        PrintAndPhoto.of(params)


def test_tracks_without_a_transform_keep_their_cache_keys() -> None:
    assert "transform" not in TRACKS["digits"].config() and "photo" not in TRACKS["mnist-linf"].config()
    physical = TRACKS["mnist-physical"].config()
    assert physical["transform"] == "print-photo" and physical["photo"] == {}
    assert TRACKS["digits-physical"].photo_ranges.blur == 0.5


def test_tracks_toml_configures_the_ranges_and_refuses_ranges_without_the_transform(tmp_path: Path) -> None:
    (tmp_path / "tracks.toml").write_text(
        '[tracks.foggy]\nbase = "mnist-physical"\nphoto = { blur = 1.5, noise = 0.05 }\n'
    )
    foggy = load_tracks(tmp_path)["foggy"]
    assert (foggy.photo_ranges.blur, foggy.photo_ranges.noise, foggy.photo_ranges.rotate) == (1.5, 0.05, 4.0)
    (tmp_path / "tracks.toml").write_text('[tracks.odd]\nbase = "digits"\nphoto = { blur = 1.5 }\n')
    with pytest.raises(TrackError, match='photo ranges need transform = "print-photo"'):
        load_tracks(tmp_path)
    (tmp_path / "tracks.toml").write_text('[tracks.odd]\nbase = "digits"\ntransform = "polaroid"\n')
    with pytest.raises(TrackError, match="transform 'polaroid' not in"):
        load_tracks(tmp_path)


def test_the_photo_seed_comes_from_the_secret_and_travels_with_the_evaluation_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    track = dataclasses.replace(TRACKS["digits-physical"], eval_size=20)
    first = evaluation.build(track, tmp_path, b"one")
    assert first.photo_seed != 0 and first.photo_seed != evaluation.build(track, tmp_path, b"two").photo_seed
    assert evaluation.EvalSet.unpack(first.pack(track.levels)).photo_seed == first.photo_seed
    monkeypatch.setattr(evaluation, "DRAWS", 1)  # a physical track keeps each image's first draw; so does this one
    plain = evaluation.build(dataclasses.replace(track, transform="none", photo={}), tmp_path, b"one")
    assert plain.photo_seed == 0 and torch.equal(plain.x, first.x)  # the same images, not photographed yet


def test_the_rules_page_says_what_a_physical_track_does_to_the_images(tmp_path: Path) -> None:
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}", "ARENA_HOME": str(tmp_path), "TESTING": True})
    app.extensions["arena_db"].upgrade()
    (track,) = [t for t in app.test_client().get("/api/rules").json["tracks"] if t["name"] == "digits-physical"]
    fields = {f["name"]: f["value"] for f in track["fields"]}
    assert fields["transform"].startswith("every image printed and photographed") and "blur 0.5" in fields["photo"]
    digits = next(t for t in app.test_client().get("/api/rules").json["tracks"] if t["name"] == "digits")
    assert "transform" not in {f["name"] for f in digits["fields"]}
    app.extensions["arena_db"].dispose()


def test_a_defense_trains_on_photographs_drawn_from_the_published_ranges_only_on_a_physical_track() -> None:
    track = TRACKS["digits-physical"]
    x = torch.rand(8, *track.input_shape)

    def context(photo: PrintAndPhoto | None) -> TrainContext:
        return TrainContext(
            track.name, 10, track.input_shape, "linf", 0.2, x, torch.zeros(8, dtype=torch.long),
            track.make_reference, torch.device("cpu"), 7, 60.0, 1, track.levels, photo=photo,
        )  # fmt: skip

    assert context(None).photograph(x) is x
    photographed = context(track.photo_ranges).photograph(x)
    assert photographed.shape == x.shape and not torch.equal(photographed, x)
    assert torch.equal(photographed * (track.levels - 1), torch.round(photographed * (track.levels - 1)))  # on the grid
    assert torch.equal(photographed, context(track.photo_ranges).photograph(x))  # its draws come from the seed
