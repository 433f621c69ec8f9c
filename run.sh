#!/usr/bin/env bash
# Set up the virtualenv and run the service: Streamlit UI + JSON API on one port ($PORT, default 8080).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh requirements.txt
# glibc gives each thread its own malloc arena; two keep RSS flat under load (RELIABILITY.md)
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
exec .venv/bin/python app.py
