"""Data sets: scikit-learn's 8x8 digits (offline, anywhere) and MNIST (from a folder, or downloaded).

Every loader returns a :class:`Dataset` of float32 images shaped (N, 1, H, W) in [0, 1] and int64
labels. Its arrays are read-only, since :func:`load_dataset` shares one copy per process: copy
before changing them (``torch.tensor(array)`` copies; ``torch.from_numpy`` would warn).

MNIST lies in a data folder (``ARENA_DATA_DIR``) as ``mnist.npz`` (keys ``x_train``, ``y_train``,
``x_test``, ``y_test``, uint8) or as the four IDX files of LeCun's site, gzipped or not.
:func:`download_mnist` fetches the gzipped IDX files, checksum-verified, for users who are online.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: the data sets :func:`load_dataset` knows, with the shape of one image; both have ten classes
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}
DATASETS: tuple[str, ...] = tuple(INPUT_SHAPES)
NUM_CLASSES = 10
#: the grey levels each data set's images take: digits 0..16 (17 levels), MNIST 0..255 (256)
PIXEL_LEVELS: dict[str, int] = {"digits": 17, "mnist": 256}

#: images of the digits split held out for testing (of 1797), and the split's seed
DIGITS_TEST_SIZE = 500
DIGITS_SEED = 0

#: the four IDX files of MNIST, by (split, kind); each may also lie gzipped, with ``.gz`` appended
MNIST_FILES: dict[tuple[str, str], str] = {
    ("train", "x"): "train-images-idx3-ubyte",
    ("train", "y"): "train-labels-idx1-ubyte",
    ("test", "x"): "t10k-images-idx3-ubyte",
    ("test", "y"): "t10k-labels-idx1-ubyte",
}

#: a public mirror of LeCun's MNIST files (the one torchvision uses)
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: md5 of the official gzipped files (as torchvision checks them)
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

#: IDX magic numbers: 0x00000801 (labels, 1 dimension) and 0x00000803 (images, 3 dimensions) of ubytes
_IDX_MAGIC = {"y": 0x801, "x": 0x803}


class DataUnavailable(RuntimeError):
    """A data set cannot be found; the message says where the arena looked and how to fix it."""


class DataCorrupt(DataUnavailable):
    """A data file exists but is damaged or not what it claims to be (also: a failed checksum)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A data set's train and test splits: images float32 (N, 1, H, W) in [0, 1], labels int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            array.setflags(write=False)

    @property
    def num_classes(self) -> int:
        """The number of classes (labels run from 0 to ``num_classes - 1``)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _images(pixels: np.ndarray, scale: float) -> np.ndarray:
    """(N, H, W) pixels in [0, scale] as float32 (N, 1, H, W) in [0, 1]."""
    return (pixels.astype(np.float32) / np.float32(scale))[:, None]


# --------------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------------


def _stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (train, test), each class held out in proportion, the same everywhere.

    The positions are shuffled (numpy's legacy generator, whose stream never changes), grouped by
    class, and every ``len / test_size``-th one is held out, so each class loses its share (+-1).
    """
    n = len(labels)
    order = np.random.RandomState(seed).permutation(n)
    order = order[np.argsort(labels[order], kind="stable")]
    steps = np.arange(n + 1) * test_size // n
    held_out = steps[1:] > steps[:-1]
    return np.sort(order[~held_out]), np.sort(order[held_out])


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, shipped with it) with a fixed stratified split."""
    import sklearn.datasets  # a slow import, needed only here

    digits = sklearn.datasets.load_digits()
    x = _images(digits.images, 16.0)
    y = digits.target.astype(np.int64)
    train, test = _stratified_split(y, DIGITS_TEST_SIZE, DIGITS_SEED)
    return Dataset("digits", x[train], y[train], x[test], y[test])


# --------------------------------------------------------------------------------------------------
# MNIST from a folder
# --------------------------------------------------------------------------------------------------


def _missing(data_dir: Path, detail: str) -> DataUnavailable:
    files = ", ".join(MNIST_FILES.values())
    return DataUnavailable(
        f"MNIST not found in {data_dir}: {detail}.\n"
        f"It needs mnist.npz (uint8 arrays x_train, y_train, x_test, y_test) or the four IDX files "
        f"({files}; each may be gzipped, ending in .gz).\n"
        f"Fix: set ARENA_DATA_DIR to a folder that holds them, or download them there (online):\n"
        f"  python -c \"from arena.rules.data import download_mnist; download_mnist('{data_dir}')\""
    )


def read_idx(path: Path, kind: str) -> np.ndarray:
    """Read an IDX file of ubytes (gzipped when its name ends in ``.gz``); ``kind`` is "x" or "y"."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DataCorrupt(f"{path}: cannot read it ({error}); delete it and fetch it again") from error
    ndim = 3 if kind == "x" else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataCorrupt(f"{path}: only {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != _IDX_MAGIC[kind]:
        raise DataCorrupt(
            f"{path}: magic number {magic:#010x}, expected {_IDX_MAGIC[kind]:#010x} "
            f"(IDX {'images' if kind == 'x' else 'labels'} of unsigned bytes)"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(shape)):
        raise DataCorrupt(
            f"{path}: the header promises {shape} = {int(np.prod(shape))} bytes, "
            f"the file holds {len(data) - header}; it is truncated or damaged"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(npz.files)
            if missing:
                raise DataCorrupt(f"{path}: lacks the arrays {sorted(missing)}")
            return {key: npz[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataCorrupt(f"{path}: not a readable .npz file ({error})") from error


def _read_idx_folder(data_dir: Path) -> dict[str, np.ndarray]:
    arrays, missing = {}, []
    for (split, kind), name in MNIST_FILES.items():
        found = [data_dir / f for f in (name, f"{name}.gz") if (data_dir / f).is_file()]
        if found:
            arrays[f"{kind}_{split}"] = read_idx(found[0], kind)
        else:
            missing.append(name)
    if len(missing) == len(MNIST_FILES):
        raise _missing(data_dir, "neither mnist.npz nor IDX files are there")
    if missing:
        raise _missing(data_dir, f"the IDX files {missing} are missing")
    return arrays


def load_mnist(data_dir: Path) -> Dataset:
    """MNIST from ``data_dir``: ``mnist.npz`` if present, else the four IDX files (gzipped or not)."""
    data_dir = Path(data_dir)
    npz = data_dir / "mnist.npz"
    arrays = _read_npz(npz) if npz.is_file() else _read_idx_folder(data_dir)
    source = npz if npz.is_file() else data_dir
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or y.dtype != np.uint8:
            raise DataCorrupt(f"{source}: {split} arrays are {x.dtype}/{y.dtype}, expected uint8")
        if x.ndim != 3 or x.shape[1:] != INPUT_SHAPES["mnist"][1:] or y.shape != (len(x),):
            raise DataCorrupt(f"{source}: {split} images {x.shape} and labels {y.shape} are not MNIST's")
        if y.max(initial=0) >= NUM_CLASSES:
            raise DataCorrupt(f"{source}: {split} labels go up to {y.max()}, expected 0..{NUM_CLASSES - 1}")
    return Dataset(
        "mnist",
        _images(arrays["x_train"], 255.0),
        arrays["y_train"].astype(np.int64),
        _images(arrays["x_test"], 255.0),
        arrays["y_test"].astype(np.int64),
    )


# --------------------------------------------------------------------------------------------------
# MNIST download
# --------------------------------------------------------------------------------------------------


def _hasher(expected: str) -> Callable[[], Any]:
    """A factory of the hash ``expected`` is written in: md5 (32 hex digits) or sha256 (64)."""
    algorithm = {32: "md5", 64: "sha256"}.get(len(expected))
    if algorithm is None:
        raise ValueError(f"checksum {expected!r} is neither an md5 (32 hex digits) nor a sha256 (64)")
    return functools.partial(hashlib.new, algorithm, usedforsecurity=False)


def _verified(path: Path, expected: str) -> bool:
    """Whether ``path`` is a file whose checksum is ``expected``."""
    if not path.is_file():
        return False
    with path.open("rb") as file:
        return hashlib.file_digest(file, _hasher(expected)).hexdigest() == expected.lower()


def _fetch(url: str, path: Path, expected: str) -> None:
    """Stream ``url`` into a temporary file beside ``path``, verify it, then rename it into place."""
    digest = _hasher(expected)()
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                file.write(block)
        if digest.hexdigest() != expected.lower():
            raise DataCorrupt(
                f"{url}: checksum {digest.hexdigest()} does not match the expected {expected}; "
                f"nothing was kept (a bad mirror or a broken transfer: try again or another base_url)"
            )
        os.replace(temp, path)
    except OSError as error:  # URLError, HTTPError, time-outs, a full disk
        raise DataUnavailable(f"cannot download {url}: {error}") from error
    finally:
        Path(temp).unlink(missing_ok=True)


def download_mnist(dest: Path, base_url: str = MNIST_URL, checksums: Mapping[str, str] = MNIST_MD5) -> Path:
    """Download the files named in ``checksums`` from ``base_url`` into ``dest``; return ``dest``.

    Each file is streamed to a temporary file, checked against its md5 or sha256 and only then
    renamed into place, so a failed or forged transfer leaves nothing behind. Files already present
    with the right checksum are not fetched again.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, expected in checksums.items():
        if not _verified(dest / name, expected):
            _fetch(base_url.rstrip("/") + "/" + name, dest / name, expected)
    return dest


def bundled_data_files() -> list[Path]:
    """Data files that installed packages carry (scikit-learn's digits and its other toy sets).

    Sandboxes hide them: a plugin gets data only from the arena (see :mod:`arena.sandbox`).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return []
    datasets = Path(next(iter(spec.submodule_search_locations))) / "datasets"
    folders = [datasets / "data", datasets / "images", datasets / "descr"]
    found = (f for folder in folders if folder.is_dir() for f in folder.iterdir())
    return sorted(f for f in found if f.is_file() and f.suffix != ".py")


# --------------------------------------------------------------------------------------------------
# By name, cached
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, data_dir: Path | None) -> Dataset:
    return load_digits() if data_dir is None else load_mnist(data_dir)


def load_dataset(name: str, data_dir: Path) -> Dataset:
    """The data set ``name`` ("digits" or "mnist"), loaded once per process and folder."""
    if name == "digits":
        return _load_cached(name, None)
    if name == "mnist":
        return _load_cached(name, Path(data_dir).resolve())
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
