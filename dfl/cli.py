"""The `dfl` command line: flags -> one typed config -> daemon, simulator or benchmarks.

Every command lives in ``dfl/commands/``; this module only assembles the group and turns dfl's
own errors into one clear line and exit status 1 (a bad config, a corrupt store or a missing
dataset never ends in a traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

import dfl
from dfl.config import Config
from dfl.errors import DflError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except DflError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """dfl: decentralized, poisoning-resistant federated learning on per-node signed chains."""


@main.command()
def version() -> None:
    """Print the dfl version."""
    click.echo(f"dfl {dfl.__version__}")


@main.command()
@click.option(
    "--home",
    "home_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for the node key, config and data.",
)
@click.option("--network", default=None, help="Network (task) name; nodes of one network share it.")
@click.option("--force", is_flag=True, help="Overwrite an existing key (changes the identity).")
def init(home_dir: Path, network: str | None, force: bool) -> None:
    """Create a node identity (Ed25519 key, mode 0600) and a config.toml with every setting."""
    from dfl.node.home import Home

    cfg = Config().with_overrides(task={"network": network})
    ident = Home(home_dir).init(cfg, force=force)
    click.echo(f"peer id: {ident.peer_id}")
    click.echo(f"public key: {ident.public_key.hex()}")
    click.echo(f"home: {home_dir}")


def _register() -> None:
    from dfl.commands.bench import bench
    from dfl.commands.chain import chain
    from dfl.commands.data import data
    from dfl.commands.node import node
    from dfl.commands.sim import sim
    from dfl.commands.testbed import testbed

    for command in (bench, chain, data, node, sim, testbed):
        main.add_command(command)


_register()
