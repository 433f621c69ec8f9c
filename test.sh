#!/usr/bin/env bash
# Set up the virtualenv (with test tools), the browser for the end-to-end tests,
# and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh requirements-dev.txt
scripts/install-browser.sh
exec .venv/bin/python -m pytest "$@"
