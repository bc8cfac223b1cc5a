"""Compact storage of per-sample arrays (results' samples, galleries) as compressed ``.npz`` bytes."""

from __future__ import annotations

import io

import numpy as np


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise named arrays into compressed ``.npz`` bytes."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def unpack(data: bytes) -> dict[str, np.ndarray]:
    """Read back what :func:`pack` wrote (no pickled objects are ever loaded)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
