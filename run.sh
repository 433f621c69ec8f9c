#!/usr/bin/env bash
# Set up the virtualenv and run the service: Streamlit UI + JSON API on one port ($PORT, default 8080).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh requirements.txt
# glibc gives each thread its own malloc arena; two keep RSS flat under load (RELIABILITY.md)
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
# Local use: serve this machine only, and let whoever opens http://localhost:$PORT do everything without
# signing in (docs/security.md). With NSFW_HOST set (say 0.0.0.0, to serve other machines) local
# mode stays off unless asked for, and the operator pages need sign-in, as in a deployment.
if [ -z "${NSFW_HOST:-}" ]; then
    export NSFW_HOST=127.0.0.1
    export NSFW_LOCAL_MODE="${NSFW_LOCAL_MODE:-true}"
fi
exec .venv/bin/python app.py
