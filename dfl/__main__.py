"""`python -m dfl` is the `dfl` command."""

from dfl.cli import main

main()
