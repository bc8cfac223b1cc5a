"""The rules, generated from what the referee uses: the tracks' configurations, the threat models, the
referee's constants and the scoring rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import select

from arena.contract.plugins import MAX_PLUGIN_BYTES
from arena.results.diagnostics import EXPLANATIONS
from arena.results.history import BREAK_SUCCESS_RATE
from arena.rules.hookspecs import THREATS
from arena.rules.physical import PrintAndPhoto
from arena.rules.referee import GALLERY_SIZE, REFEREE_VERSION, TOLERANCE
from arena.rules.tracks import INFERENCE_MS, TRACKS, Track, TrackError, load_tracks
from arena.store import TrackRow
from leaderboard.lookup import database

#: what each threat model hands an attack (arena/play/threats.py builds these views)
THREAT_MODELS = {
    "white-box": "The defended model itself, with gradients; queries; the substitute model.",
    "gray-box": "A twin: the same defense code trained by the arena on the same data with another, secret seed; "
    "queries to the real model; the substitute model. It knows the structure and training data, not the parameters.",
    "black-box": "No model at all: only queries, answered with probabilities and counted against the budget, and a "
    "substitute model of another architecture. The defended model never enters the attack's process.",
}

#: how the rules page names a track's fields; fields not named here are shown by their own name
FIELD_LABELS = {
    "dataset": "data set",
    "norm": "norm",
    "eps": "budget (eps)",
    "eval_size": "evaluation samples",
    "max_queries": "queries per sample",
    "clean_floor": "clean-accuracy floor",
    "epochs": "training epochs",
    "reference": "reference architecture",
    "substitute": "substitute architecture",
    "draws": "draws for randomized defenses",
    "batch_size": "attack batch size",
    "time_limit": "time limit per call (s)",
    "evaluation": "evaluation images",
    "levels": "grey levels of every image",
    "max_artifact_mb": "trained model at most (MiB)",
    "inference_ms": "inference budget per image and draw (ms)",
    "transform": "what the defense sees",
    "photo": "print-and-photo ranges (each image its own secret draw)",
}
#: what each kind of evaluation data is (arena/rules/evaluation.py makes them)
EVALUATIONS = {
    "transformed": "a secret distortion of the held-out split (drawn from the arena's secret)",
    "public": "the published held-out split",
    "private": "the instructor's private set",
}
#: fields never shown (a private set's path is the server's)
HIDDEN_FIELDS = ("eval_path",)


def rules() -> dict[str, Any]:
    """Tracks (as last played, or as configured when not played yet), threat models and scoring."""
    with database().session() as session:
        played = {name: config for name, config in session.execute(select(TrackRow.name, TrackRow.config))}
    configured, problem = _configured(Path(current_app.config["ARENA_HOME"]))
    order = [f.name for f in dataclasses.fields(Track) if f.name not in ("name", "description")]
    tracks = []
    for name in sorted(set(played) | set(configured)):
        mine = configured.get(name)
        now = mine.config() if mine else None
        config = played.get(name, now)
        config = {"inference_ms": INFERENCE_MS.get(config.get("dataset", ""))} | config  # the data set's default
        shown = [k for k in order if k in config] + sorted(k for k in config if k not in order and k != "name")
        shown = [k for k in shown if k not in HIDDEN_FIELDS]
        tracks.append(
            {
                "name": name,
                "description": mine.description if mine else "",
                "played": name in played,
                "changed_since_played": name in played and now is not None and now != played[name],
                "fields": [{"name": k, "label": FIELD_LABELS.get(k, k), "value": _shown(k, config[k])} for k in shown],
            }
        )
    return {
        "tracks": tracks,
        "tracks_error": problem,
        "threats": [{"name": t, "description": THREAT_MODELS.get(t, "")} for t in THREATS],
        "referee": {"version": REFEREE_VERSION, "tolerance": TOLERANCE, "gallery_size": GALLERY_SIZE},
        "break_success_rate": BREAK_SUCCESS_RATE,
        "max_plugin_bytes": MAX_PLUGIN_BYTES,
        "diagnostics": EXPLANATIONS,
    }


#: what each transform does to the images a defense judges (arena/rules/physical.py)
TRANSFORMS = {"print-photo": "every image printed and photographed (warp, blur, exposure, noise, JPEG), queries too"}


def _shown(field: str, value: Any) -> Any:
    """A track field's value as the page says it."""
    if field == "photo":
        return ", ".join(f"{k} {v:g}" for k, v in dataclasses.asdict(PrintAndPhoto.of(value)).items())
    return {"evaluation": EVALUATIONS, "transform": TRANSFORMS}.get(field, {}).get(value, value)


def _configured(home: Path) -> tuple[dict[str, Track], str | None]:
    """The tracks the arena's configuration defines, or the built-ins and the reason it could not be read."""
    try:
        return load_tracks(home), None
    except TrackError as error:
        return dict(TRACKS), str(error)
