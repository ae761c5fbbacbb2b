"""The typed config: every setting rendered, round trips, clear errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfl.config import Config, load_config, render_toml, task_manifest
from dfl.errors import ConfigError


def test_render_then_load_is_identity(tmp_path: Path) -> None:
    cfg = Config().with_overrides(
        node={"bootstrap": ("/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWabc",), "max_peers": 7},
        task={"model": "lenet", "lr": 0.01, "num_nodes": 5, "node_index": 4},
        round={"timeout_s": 2.5},
    )
    p = tmp_path / "config.toml"
    p.write_text(render_toml(cfg))
    assert load_config(p) == cfg
    text = p.read_text()
    for key in (
        "listen",
        "bootstrap",
        "data_dir",
        "dataset",
        "partition",
        "model",
        "rule",
        "timeout_s",
        "max_header_bytes",
        "prune_blobs_after_rounds",
    ):
        assert f"\n{key} = " in text


@given(
    lr=st.floats(min_value=1e-6, max_value=10, allow_nan=False),
    epochs=st.integers(min_value=1, max_value=100),
    name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=40),
)
def test_round_trip_property(lr: float, epochs: int, name: str) -> None:
    cfg = Config().with_overrides(task={"lr": lr, "local_epochs": epochs, "network": name})
    import tomllib

    from dfl.config import config_from_dict

    assert config_from_dict(tomllib.loads(render_toml(cfg))) == cfg


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[task]\nlr = 'fast'\n", "task.lr"),
        ("[task]\nnode_index = 9\nnum_nodes = 2\n", "task.node_index"),
        ("[round]\ntimeout_s = 0\n", "round.timeout_s"),
        ("[nodes]\nx = 1\n", "unknown config section [nodes]"),
        ("[node]\nbootstrap = ['/ip4/1.2.3.4/tcp/1']\n", "node.bootstrap"),
        ("[node]\nlisten = 'x'\n", "node.listen"),
        ("[task]\npartition = 'weird'\n", "task.partition"),
        ("[limits]\nmax_header_bytes = 99999999\n", "limits.max_header_bytes"),
        ("this is = not toml [", "invalid TOML"),
        ("[task]\nbatch_size = true\n", "task.batch_size"),
        ("[robust]\neval_samples = 0\n", "robust.eval_samples"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    p = tmp_path / "config.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert fragment in str(e.value)
    assert str(p) in str(e.value)


def test_missing_config_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dfl init"):
        load_config(tmp_path / "nope.toml")


def test_network_id_depends_on_task_not_on_node_index() -> None:
    a = Config().with_overrides(task={"num_nodes": 4, "node_index": 0})
    b = Config().with_overrides(task={"num_nodes": 4, "node_index": 3})
    c = Config().with_overrides(task={"num_nodes": 4, "model": "lenet"})
    assert task_manifest(a).network_id() == task_manifest(b).network_id()
    assert task_manifest(a).network_id() != task_manifest(c).network_id()
