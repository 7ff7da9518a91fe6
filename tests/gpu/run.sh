#!/usr/bin/env bash
# Check every CUDA path of AWM and measure it on one GPU, in two device calls (--call 1, --call 2).
#
#   tests/gpu/run.sh [--call N] [--out FILE] [--sections a,b] [--skip a,b] [--jobs N] [--budget S] [--cpu-dry-run]
#
# Needs only a Python with torch (+ CUDA), torchvision, accelerate, OpenCV, numpy, PyYAML,
# safetensors, einops, tqdm and tensorboard (what the lent H200 machines have preinstalled).
# AWM's other pure-Python dependencies travel in tests/gpu/wheels/ (spandrel, webdataset,
# wids, braceexpand: ~430 KB, committed, refreshed by `make gpu-wheels`); those that do not
# import are installed from there with `pip --no-index --target` into $AWM_GPU_SITE (default
# /tmp/awm-gpu-site) and put on PYTHONPATH. No network, no venv, no install of AWM itself
# (the repo root goes on PYTHONPATH). DeepSpeed is used when installed, else its section is
# skipped. Details, sections and the defect each one covers: tests/gpu/README.md.
#
# Appends JSON lines to --out (default runs/gpu_checks.jsonl) and prints them: the run and the
# two-call recipe, one line per section the moment it ends (a killed run keeps them), a summary.
# Exit 0: every section that ran passed; 1: some failed; 3: no CUDA GPU (nothing run).
set -u
cd "$(dirname "$0")/../.." || exit 2
PY=${PYTHON:-python3}
SITE=${AWM_GPU_SITE:-/tmp/awm-gpu-site}
missing=()
for pair in spandrel:spandrel webdataset:webdataset wids:wids braceexpand:braceexpand; do
    mod=${pair%%:*}; whl=${pair##*:}
    "$PY" -c "import $mod" 2>/dev/null || missing+=(tests/gpu/wheels/"$whl"-*.whl)
done
if [ ${#missing[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "${missing[@]}" || { echo "could not install the carried wheels ${missing[*]} into $SITE" >&2; exit 2; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" tests/gpu/gpu_checks.py "$@"
