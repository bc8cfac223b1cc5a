"""Data sets: digits offline, MNIST from an npz or IDX files (plain or gzipped), a real download."""

from __future__ import annotations

import functools
import gzip
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from arena.rules.data import (
    MNIST_FILES,
    DataCorrupt,
    DataUnavailable,
    download_mnist,
    load_dataset,
    load_digits,
    load_mnist,
)

#: label counts of the official MNIST splits
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@functools.cache
def small_mnist(npz: Path) -> dict[str, np.ndarray]:
    """The first 300 training and 100 test images of the shared MNIST npz, as uint8 arrays."""
    with np.load(npz) as data:
        return {
            "x_train": data["x_train"][:300],
            "y_train": data["y_train"][:300],
            "x_test": data["x_test"][:100],
            "y_test": data["y_test"][:100],
        }


@pytest.fixture
def small(mnist_dir: Path) -> dict[str, np.ndarray]:
    return small_mnist(mnist_dir / "mnist.npz")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_idx_folder(folder: Path, arrays: dict[str, np.ndarray], suffix: str = "") -> Path:
    """Write the four MNIST IDX files of ``arrays`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for (split, kind), name in MNIST_FILES.items():
        write_idx(folder / f"{name}{suffix}", arrays[f"{kind}_{split}"])
    return folder


def assert_matches(dataset: Any, arrays: dict[str, np.ndarray]) -> None:
    """``dataset`` holds ``arrays`` (uint8) as float images in [0, 1] and int64 labels."""
    for split in ("train", "test"):
        np.testing.assert_array_equal(
            getattr(dataset, f"x_{split}"), arrays[f"x_{split}"][:, None].astype(np.float32) / 255
        )
        np.testing.assert_array_equal(getattr(dataset, f"y_{split}"), arrays[f"y_{split}"].astype(np.int64))


# --------------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------------


def test_digits_loads_offline_with_shapes_dtypes_and_ranges() -> None:
    digits = load_digits()
    assert digits.name == "digits"
    assert digits.x_train.shape == (1297, 1, 8, 8) and digits.x_test.shape == (500, 1, 8, 8)
    assert digits.x_train.dtype == digits.x_test.dtype == np.float32
    assert digits.y_train.dtype == digits.y_test.dtype == np.int64
    assert digits.x_train.min() == 0 and digits.x_train.max() == 1
    assert set(np.unique(digits.y_test)) == set(range(10)) and digits.num_classes == 10
    assert not digits.x_train.flags.writeable


def test_digits_split_is_fixed_and_stratified() -> None:
    first, second = load_digits(), load_digits()
    np.testing.assert_array_equal(first.x_test, second.x_test)
    np.testing.assert_array_equal(first.y_train, second.y_train)
    # pinned: the split must be the same on every machine and every version
    assert first.y_test[:12].tolist() == [1, 8, 0, 5, 1, 6, 9, 0, 5, 9, 4, 7]
    assert float(first.x_test.sum(dtype=np.float64)) == 9762.75
    labels = np.concatenate([first.y_train, first.y_test])
    expected = np.bincount(labels) * 500 / len(labels)
    assert np.all(np.abs(np.bincount(first.y_test) - expected) <= 1)


def test_load_dataset_caches_per_name_and_folder(tmp_path: Path) -> None:
    assert load_dataset("digits", tmp_path) is load_dataset("digits", tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="unknown data set 'cifar'; known: digits, mnist"):
        load_dataset("cifar", tmp_path)


# --------------------------------------------------------------------------------------------------
# MNIST from a folder
# --------------------------------------------------------------------------------------------------


def test_mnist_from_the_shared_npz(mnist_dir: Path) -> None:
    mnist = load_dataset("mnist", mnist_dir)
    assert load_dataset("mnist", mnist_dir / ".." / mnist_dir.name) is mnist
    assert mnist.x_train.shape == (60000, 1, 28, 28) and mnist.x_test.shape == (10000, 1, 28, 28)
    assert mnist.x_test.dtype == np.float32 and mnist.y_test.dtype == np.int64
    assert mnist.x_test.min() == 0 and mnist.x_test.max() == 1
    assert np.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.y_test).tolist() == MNIST_TEST_COUNTS


@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["plain", "gzipped"])
def test_mnist_from_idx_files_equals_the_npz(tmp_path: Path, small: dict[str, np.ndarray], suffix: str) -> None:
    np.savez_compressed(tmp_path / "mnist.npz", **small)
    from_npz = load_mnist(tmp_path)
    from_idx = load_mnist(write_idx_folder(tmp_path / "idx", small, suffix))
    assert_matches(from_npz, small)
    assert_matches(from_idx, small)


def test_mnist_idx_files_may_mix_plain_and_gzipped(tmp_path: Path, small: dict[str, np.ndarray]) -> None:
    write_idx_folder(tmp_path, small, ".gz")
    name = MNIST_FILES["train", "x"]
    (tmp_path / f"{name}.gz").rename(tmp_path / "plain.gz")
    (tmp_path / name).write_bytes(gzip.decompress((tmp_path / "plain.gz").read_bytes()))
    assert_matches(load_mnist(tmp_path), small)


def corrupt_magic(data: bytes) -> bytes:
    return (0x0D03).to_bytes(4, "big") + data[4:]


def truncate(data: bytes) -> bytes:
    return data[:-100]


@pytest.mark.parametrize(
    ("damage", "message"),
    [(corrupt_magic, "magic number 0x00000d03, expected 0x00000803"), (truncate, "truncated or damaged")],
    ids=["magic", "truncated"],
)
@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["plain", "gzipped"])
def test_corrupt_idx_file_gives_a_readable_error(
    tmp_path: Path, small: dict[str, np.ndarray], suffix: str, damage: Any, message: str
) -> None:
    write_idx_folder(tmp_path, small, suffix)
    path = tmp_path / f"{MNIST_FILES['test', 'x']}{suffix}"
    data = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    path.write_bytes(gzip.compress(damage(data)) if suffix else damage(data))
    with pytest.raises(DataCorrupt, match=message) as caught:
        load_mnist(tmp_path)
    assert str(path) in str(caught.value)


def scramble(data: bytes) -> bytes:
    """``data`` with bytes 100 to 400 (early in the compressed stream) scrambled: zlib fails there."""
    return data[:100] + bytes(b ^ 0x55 for b in data[100:400]) + data[400:]


@pytest.mark.parametrize("damage", [lambda data: b"\x1f\x8b not really gzip", scramble], ids=["header", "stream"])
def test_broken_gzip_file_gives_a_readable_error(tmp_path: Path, small: dict[str, np.ndarray], damage: Any) -> None:
    write_idx_folder(tmp_path, small, ".gz")
    path = tmp_path / f"{MNIST_FILES['train', 'x']}.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataCorrupt, match="train-images-idx3-ubyte.gz: cannot read it .*fetch it again"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("damage", [lambda data: b"PK garbage", scramble], ids=["header", "stream"])
def test_broken_npz_gives_a_readable_error(tmp_path: Path, small: dict[str, np.ndarray], damage: Any) -> None:
    np.savez_compressed(tmp_path / "mnist.npz", **small)
    (tmp_path / "mnist.npz").write_bytes(damage((tmp_path / "mnist.npz").read_bytes()))
    with pytest.raises(DataCorrupt, match="mnist.npz: not a readable .npz file"):
        load_mnist(tmp_path)


def test_npz_with_wrong_content_is_rejected(tmp_path: Path, small: dict[str, np.ndarray]) -> None:
    np.savez(tmp_path / "mnist.npz", **{**small, "x_test": small["x_test"][:, :20]})
    with pytest.raises(DataCorrupt, match=r"test images \(100, 20, 28\) and labels \(100,\) are not MNIST's"):
        load_mnist(tmp_path)
    np.savez(tmp_path / "mnist.npz", x_train=small["x_train"])
    with pytest.raises(DataCorrupt, match=r"lacks the arrays \['x_test', 'y_test', 'y_train'\]"):
        load_mnist(tmp_path)


def test_missing_mnist_says_where_it_looked_and_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailable) as caught:
        load_mnist(tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message and "mnist.npz" in message and "t10k-images-idx3-ubyte" in message
    assert "ARENA_DATA_DIR" in message and "download_mnist" in message


def test_partial_idx_folder_names_the_missing_files(tmp_path: Path, small: dict[str, np.ndarray]) -> None:
    write_idx_folder(tmp_path, small)
    (tmp_path / MNIST_FILES["test", "y"]).unlink()
    with pytest.raises(DataUnavailable, match=r"the IDX files \['t10k-labels-idx1-ubyte'\] are missing"):
        load_mnist(tmp_path)


# --------------------------------------------------------------------------------------------------
# MNIST download, from a real HTTP server on this machine
# --------------------------------------------------------------------------------------------------


@dataclass
class Mirror:
    """A local MNIST mirror: its URL, the files it serves, and the paths it was asked for."""

    url: str
    root: Path
    requests: list[str]

    def checksums(self, algorithm: str = "md5") -> dict[str, str]:
        return {
            f"{name}.gz": hashlib.new(algorithm, (self.root / f"{name}.gz").read_bytes()).hexdigest()
            for name in MNIST_FILES.values()
        }


@pytest.fixture
def mirror(tmp_path: Path, small: dict[str, np.ndarray]) -> Iterator[Mirror]:
    root = write_idx_folder(tmp_path / "mirror", small, ".gz")
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Mirror(f"http://127.0.0.1:{server.server_port}/", root, requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_download_verifies_and_then_loads(
    tmp_path: Path, mirror: Mirror, small: dict[str, np.ndarray], algorithm: str
) -> None:
    dest = tmp_path / "data"
    assert download_mnist(dest, mirror.url, mirror.checksums(algorithm)) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{name}.gz" for name in MNIST_FILES.values())
    assert_matches(load_mnist(dest), small)
    assert len(mirror.requests) == 4
    download_mnist(dest, mirror.url, mirror.checksums(algorithm))
    assert len(mirror.requests) == 4, "verified files are not downloaded again"


def test_checksum_mismatch_raises_and_keeps_nothing(tmp_path: Path, mirror: Mirror) -> None:
    checksums = mirror.checksums()
    checksums["train-labels-idx1-ubyte.gz"] = "0" * 32
    dest = tmp_path / "data"
    with pytest.raises(DataCorrupt, match="train-labels-idx1-ubyte.gz: checksum [0-9a-f]{32} does not match"):
        download_mnist(dest, mirror.url, checksums)
    assert [p.name for p in dest.iterdir()] == ["train-images-idx3-ubyte.gz"]


def test_a_damaged_local_file_is_fetched_again(tmp_path: Path, mirror: Mirror) -> None:
    dest = download_mnist(tmp_path / "data", mirror.url, mirror.checksums())
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    download_mnist(dest, mirror.url, mirror.checksums())
    assert mirror.requests[4:] == ["/t10k-labels-idx1-ubyte.gz"]
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == (mirror.root / "t10k-labels-idx1-ubyte.gz").read_bytes()


def test_a_missing_file_on_the_mirror_is_a_clear_error(tmp_path: Path, mirror: Mirror) -> None:
    with pytest.raises(DataUnavailable, match="cannot download http://127.0.0.1:.*/nothing.gz: HTTP Error 404"):
        download_mnist(tmp_path / "data", mirror.url, {"nothing.gz": "0" * 64})
    assert list((tmp_path / "data").iterdir()) == []
