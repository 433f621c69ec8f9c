#!/usr/bin/env bash
# Create the virtualenv $VENV (default .venv) if needed, install the pinned requirements file given as $1
# and this project (editable). Re-installs only when the requirements change (a hash stamp in the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
python="${PYTHON:-python3}"
venv="${VENV:-.venv}"
if [ ! -x "$venv"/bin/python ]; then
  "$python" -m venv "$venv"
fi
stamp="$venv/.installed-$(basename "$req")"
want="$(cat requirements*.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  "$venv"/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv"/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
  # the project itself, editable: nsfw_core and nsfw_ui import from the checkout, and the
  # nsfw-classify console script is on "$venv"/bin
  "$venv"/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
