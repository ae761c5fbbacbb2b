"""Learning side of dfl: datasets, partitioners, JAX models, robust rules and attacks.

This package ``__init__`` stays light on purpose: importing :mod:`dfl.learning` imports neither
JAX nor scikit-learn. Import the submodules you need (``dfl.learning.data``,
``dfl.learning.partition``, ``dfl.learning.models``, ...).

Invariant (checked by import-linter): nothing under ``dfl.learning`` imports trio, lmdb, libp2p
or click.
"""

from __future__ import annotations
