#!/usr/bin/env bash
# Set up everything dfl needs on a fresh machine: system packages, a virtualenv in .venv,
# and the package with its dev extra. Idempotent and quick when nothing changed.
#
# System packages: gcc and libgmp-dev (py-libp2p 0.8.1 compiles fastecdsa). Installed with
# apt-get when running as root; otherwise this stops with one line saying what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "dfl needs Python >= 3.11 (found: $("$PY" --version 2>&1 || echo none)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
if ! echo '#include <gmp.h>' | gcc -E - >/dev/null 2>&1; then missing+=(libgmp-dev); fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing system packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "dfl needs system packages: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dfl-install-stamp
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing dfl and its dependencies into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
