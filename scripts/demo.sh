#!/usr/bin/env bash
# The main job on a default that needs no manual data step: set-up, then a small simulated
# network of dfl nodes (real node core, real blocks, real training). Extra arguments go to
# `dfl sim run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/dfl sim run "$@"
