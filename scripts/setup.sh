#!/usr/bin/env bash
# Create or update .venv with exactly the pinned packages of requirements.lock (a no-op when in sync).
#
# uv, not pip: pip on these machines is configured to prefer a local CPU-only torch wheel, and
# torchvision's wheels need the registry's own torch 2.13.0 build (it runs fine on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PYTHON" -m uv --version >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
fi
[ -x .venv/bin/python ] || "$PYTHON" -m uv venv --quiet --python "$PYTHON" .venv
# --compile-bytecode: uv leaves .pyc files to the first import, which cannot write them where
# PYTHONDONTWRITEBYTECODE is set (as on our machines): every command would then compile Hydra,
# OmegaConf and numpy from source, ~0.8 s of `python -m runner --help`. The first sync compiles
# every package (a minute or two, once); later ones check them in 1-2 s.
"$PYTHON" -m uv pip sync --quiet --compile-bytecode --python .venv/bin/python requirements.lock
# the project itself, editable (`.venv/bin/runner` = `python -m runner`, the code of this checkout),
# after the sync, which removes what the lock does not list; built by the lock's setuptools, no
# download. editable_mode=compat: a path entry, not an import hook, so another checkout's
# `python -m runner` (run from its own folder) still imports its own code
"$PYTHON" -m uv pip install --quiet --no-deps --no-build-isolation --python .venv/bin/python \
  --config-settings editable_mode=compat -e .
