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
  # --no-compile, then compileall: every module is byte-compiled as pip would, except the packages' own test
  # suites (pandas, numpy, pyarrow... ship them): 40 MB of .pyc that nothing here ever imports. It keeps the
  # runtime install under its 700 MB target with PyAV (FFmpeg's libraries, 107 MB) in it.
  "$venv"/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -r "$req"
  "$venv"/bin/python -m compileall -q -j 0 -x '/site-packages/.+/tests?/' "$venv"/lib/python3*/site-packages \
    > /dev/null || true
  # the project itself, editable: nsfw_core and nsfw_ui import from the checkout, and the
  # nsfw-classify console script is on "$venv"/bin
  "$venv"/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
