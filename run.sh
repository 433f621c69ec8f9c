#!/usr/bin/env bash
# Set up the virtualenv and run the service: Streamlit UI + JSON API on one port ($PORT, default 8080).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh requirements.txt
exec .venv/bin/python app.py
