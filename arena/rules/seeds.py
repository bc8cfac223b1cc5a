"""Seeds only the arena can derive: HMACs under its secret (training, twins, evaluation draws, photos)."""

from __future__ import annotations

import hashlib
import hmac


def derive_seed(secret: bytes, *parts: str) -> int:
    """A seed that only the arena can compute: HMAC of the parts under the arena's secret."""
    digest = hmac.new(secret, "\0".join(parts).encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
