#!/usr/bin/env bash
# Create ./.venv and install lvmd with its test tools. Idempotent: a second run installs nothing new.
# torch defaults to the pinned CPU wheel (an unpinned `torch` pulls a multi-GB CUDA build);
# override it, e.g. on a GPU box: LVMD_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${LVMD_TORCH:-torch==2.13.0}
EXTRAS=${LVMD_EXTRAS:-dev}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC2086  # TORCH_SPEC may carry pip options on purpose
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check $TORCH_SPEC
fi
stamp=.venv/.lvmd-installed
want="$(cat pyproject.toml) extras=$EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[$EXTRAS]"
  printf '%s' "$want" > "$stamp"
fi
