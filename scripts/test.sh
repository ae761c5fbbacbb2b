#!/usr/bin/env bash
# The whole test command: set-up, lint, types, the import contract, then the test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check dfl simulator benchmarks tests
echo "== ruff format"; ruff format --check dfl simulator benchmarks tests
echo "== mypy"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"; pytest "$@"
