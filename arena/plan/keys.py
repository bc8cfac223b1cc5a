"""Keys by content (docs/architecture.md#keys-nothing-is-computed-twice): of trained models, evaluation sets,
match results and their attempts. Equal inputs give equal keys, so what exists is never computed again."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from arena.config import Settings
from arena.play.training import TRAINING_VERSION
from arena.rules.evaluation import EVALUATION_VERSION
from arena.rules.referee import REFEREE_VERSION
from arena.rules.tracks import Track


def digest(*parts: object) -> str:
    """The SHA-256 of ``parts`` as JSON (keys sorted): a key by content."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def secret_fingerprint(settings: Settings) -> str:
    """Names the arena's secret in keys (so a new secret retrains), without revealing it."""
    return hmac.new(settings.secret(), b"fingerprint", hashlib.sha256).hexdigest()[:16]


def artifact_key(kind: str, track: Track, fingerprint: str, defense_hash: str | None = None) -> str:
    """Key of a trained model: ``defense`` and ``twin`` depend on the defense's code and the secret, every kind on
    what training reads of the track (not on its evaluation's size or floor)."""
    if kind == "substitute":
        return digest("substitute", track.training_config(), TRAINING_VERSION)
    return digest(kind, defense_hash, track.training_config(), TRAINING_VERSION, fingerprint)


def result_key(attack_hash: str, defense_hash: str, track: Track, threat: str, seed: int, evaluation: str) -> str:
    """Key of a match result: equal inputs, equal key, and the result is reused.

    ``evaluation`` is the key of the evaluation set (:func:`evaluation_key`), which names the secret.
    """
    return digest(attack_hash, defense_hash, track.played_config(), threat, seed, REFEREE_VERSION, evaluation)


def evaluation_key(track: Track, fingerprint: str) -> str:
    """Key of a track's evaluation set: its images depend on the track, the secret and, for a private set, the file."""
    private = hashlib.sha256(Path(track.eval_path).read_bytes()).hexdigest() if track.evaluation == "private" else ""
    return digest("evaluation", track.played_config(), EVALUATION_VERSION, fingerprint, private)


def attempt_key(content_key: str, attempt: int) -> str:
    """Key of a match's ``attempt``: the first (0) is stored under its content key, each replay under its own."""
    return content_key if attempt == 0 else digest("replay", content_key, attempt)
