import click


@click.group()
def data() -> None:
    """TEMP placeholder."""
