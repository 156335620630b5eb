#!/usr/bin/env bash
# Run the project on a GPU machine that has its own Python 3.12 + CUDA torch/torchvision (and
# numpy, onnx, onnxruntime, pillow, opencv, psutil, tqdm, matplotlib, pandas, pytest...) but no
# package registry: the few pure-Python packages it lacks travel as wheels in .whl/.
#
#   bash scripts/gpu_setup.sh download          # here, with a registry: wheels into .whl/
#   bash scripts/gpu_setup.sh install           # there: the wheels into $RUNNER_SITE
#   bash scripts/gpu_setup.sh run ARGS...       # there: install, then python3 -m runner ARGS
#   bash scripts/gpu_setup.sh test ARGS...      # there: install, then python3 -m pytest ARGS
#
# Versions are the ones requirements.lock pins, so the carried packages are the ones CI tests;
# torch, torchvision and everything else come from the machine (the lock's torch 2.13 is not
# needed: the code runs on torch >= 2.11). Nothing is carried that the machine already has: a
# carried copy would shadow the machine's build (numpy, protobuf and torch are compiled against
# each other there).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
SITE=${RUNNER_SITE:-/tmp/runner-site}
PYTHON=${PYTHON:-python3}
LIMIT_MIB=64  # what one call of the GPU machine carries

# What the GPU image lacks (its package list: hydra-core, omegaconf, mlflow and their needs are
# not there). Only what a run imports: mlflow's server, UI and Databricks clients are left out.
PACKAGES=(
  hydra-core omegaconf antlr4-python3-runtime
  mlflow-skinny  # the whole mlflow package and its SQL store, without the server's UI (12 MB)
  sqlalchemy alembic mako cryptography cffi pycparser  # mlflow's SQLite store (its models import cryptography)
  cachetools sqlparse python-dotenv importlib-metadata
  fastapi starlette  # imported by mlflow's __init__ (gateway), never served
  databricks-sdk  # mlflow looks up databricks.* modules at import (find_spec needs the parent)
  opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
  pydantic pydantic-core annotated-types typing-inspection
  gitpython gitdb smmap  # mlflow reads the checkout's commit for its source tags
)
# published as a source archive only (pure Python): built into a wheel here
SOURCE_ONLY=(antlr4-python3-runtime)
# what a run and the tests import, checked after installing (torch & co. from the machine)
IMPORTS="hydra omegaconf mlflow sqlalchemy alembic torch torchvision onnx onnxruntime numpy PIL
cv2 psutil tqdm matplotlib pytest hypothesis"

pinned() {  # NAME -> NAME==VERSION from requirements.lock
  local line
  line=$(grep -i -E "^$1==" requirements.lock || true)
  [ -n "$line" ] || { echo "gpu_setup: $1 is not pinned in requirements.lock" >&2; exit 1; }
  echo "$line"
}

download() {
  mkdir -p "$WHEELS"
  rm -f "$WHEELS"/*.whl  # one version of each: two stop the whole install there
  local specs=() name
  for name in "${PACKAGES[@]}"; do
    [[ " ${SOURCE_ONLY[*]} " == *" $name "* ]] || specs+=("$(pinned "$name")")
  done
  for name in "${SOURCE_ONLY[@]}"; do
    "$PYTHON" -m pip wheel --quiet --no-deps --no-binary=:all: -w "$WHEELS" "$(pinned "$name")"
  done
  # the GPU machine: CPython 3.12, x86-64 Linux (glibc 2.28+ wheels run there)
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$WHEELS" "${specs[@]}"
  local bytes
  bytes=$(du -cb "$WHEELS"/*.whl | tail -1 | cut -f1)
  echo "gpu_setup: $(ls "$WHEELS"/*.whl | wc -l) wheels, $((bytes / 1024)) KiB in $WHEELS/"
  if [ "$bytes" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
    echo "gpu_setup: $WHEELS/ is over the ${LIMIT_MIB} MiB a GPU call carries" >&2
    exit 1
  fi
}

install() {
  compgen -G "$WHEELS/*.whl" >/dev/null || {
    echo "gpu_setup: no wheels in $WHEELS/: run 'bash scripts/gpu_setup.sh download' where a" \
      "package registry is reachable, and carry $WHEELS" >&2
    exit 1
  }
  local stamp
  stamp=$(ls "$WHEELS"/*.whl | sort | sha256sum | cut -c1-16)
  if [ "$(cat "$SITE/.runner-wheels" 2>/dev/null)" != "$stamp" ]; then
    # --target, not a venv: the machine's own torch stays importable; --no-index: no registry
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
      --disable-pip-version-check --upgrade --target "$SITE" "$WHEELS"/*.whl
    echo "$stamp" >"$SITE/.runner-wheels"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  # shellcheck disable=SC2086
  "$PYTHON" - $IMPORTS <<'EOF'
import importlib, os, sys
missing = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as error:
        missing.append(f"{name} ({error})")
if missing:
    sys.exit("gpu_setup: cannot import " + "; ".join(missing))
import torch
cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"gpu_setup: Python {sys.version.split()[0]}, torch {torch.__version__} ({cuda}), "
      f"carried packages in {os.environ['PYTHONPATH'].split(':')[0]}")
EOF
}

command=${1:-}
shift || true
case "$command" in
  download) download ;;
  install) install; echo "export PYTHONPATH=$SITE" ;;
  run) install; exec "$PYTHON" -m runner "$@" ;;
  test) install; exec "$PYTHON" -m pytest "$@" ;;
  *) echo "usage: bash scripts/gpu_setup.sh download|install|run ARGS|test ARGS" >&2; exit 2 ;;
esac
