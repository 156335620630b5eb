#!/usr/bin/env bash
# Lint and the whole test suite. Extra arguments go to pytest:
#   bash scripts/test.sh -m "not slow"    the fast tier, for development (no pipeline subprocess)
# Two pytest-xdist workers (RUNNER_TEST_WORKERS; 0 runs in this process), a test file per worker
# (its module fixtures built once); the 30 slowest tests are listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_mlflow_ui.py reads the MLflow UI in a real browser: Debian's chromium and its driver.
# Installed where apt-get can (CI runs as root); elsewhere that test skips.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium chromium-driver) >/dev/null 2>&1 \
      || echo "scripts/test.sh: could not install chromium; tests/test_mlflow_ui.py will skip"
  fi
fi
# the real ImageNet sample, beside the checkout where the workplace keeps one (CI has it); the
# product never names this folder, tests find it through RUNNER_SAMPLE_DIR and skip without it
if [ -z "${RUNNER_SAMPLE_DIR:-}" ] && [ -f ../shared/data/imagenet-sample/val_label.txt ]; then
  RUNNER_SAMPLE_DIR=$(cd ../shared/data/imagenet-sample && pwd)
  export RUNNER_SAMPLE_DIR
fi
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -n "${RUNNER_TEST_WORKERS:-2}" --dist loadfile --durations=30 "$@"
