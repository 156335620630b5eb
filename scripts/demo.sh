#!/usr/bin/env bash
# The main job, offline: every stage of the AlexNet guide at bs=16 on generated JPEGs with seeded
# random weights, tracked in ./mlflow.db. Extra arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m runner model=alexnet bs=16 dataset=synthetic model.weights=random "$@"
