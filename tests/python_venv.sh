#!/usr/bin/env bash
# Usage: tests/python_venv.sh X.Y
# Makes .venv-X.Y with ferropool and its test extra installed (a stable-ABI build, so the
# Rust part is compiled once for every version), and prints its python's path. Prints nothing,
# and says why on stderr, when no Python X.Y is found: pythonX.Y on PATH, else pyenv's newest.
set -euo pipefail
version=$1
# A pyenv shim is on PATH for versions it does not select: ask the interpreter itself.
base=$("python$version" -c 'import sys; print(sys.executable)' 2>/dev/null || true)
if [ -z "$base" ]; then
    base=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version" 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [ -z "$base" ]; then
    echo "SKIPPED Python $version: no python$version on PATH nor in pyenv" >&2
    exit 0
fi
venv=.venv-$version
if [ ! -x "$venv/bin/python" ]; then
    "$base" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
fi
"$venv/bin/pip" install --quiet ".[test]" >&2
echo "$venv/bin/python"
