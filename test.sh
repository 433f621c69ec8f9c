#!/usr/bin/env bash
# Set up the virtualenv (with test tools), the browser for the end-to-end tests,
# lint and type-check (ruff, mypy: configured in pyproject.toml), then run the
# test suite. Extra arguments go to pytest, e.g. ./test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh requirements-dev.txt
scripts/install-browser.sh
echo "ruff:" && .venv/bin/ruff check .
echo "mypy:" && .venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
