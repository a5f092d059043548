#!/usr/bin/env bash
# The README's test command: set up ./.venv (scripts/setup.sh) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# One pytest worker per CPU, at most 4 (each worker's tests start daemons of their own);
# LVMD_TEST_WORKERS=0 runs in one process. worksteal: the long daemon tests do not pile up on one worker.
cpus=$(nproc)
workers=${LVMD_TEST_WORKERS:-$(( cpus < 4 ? cpus : 4 ))}
exec .venv/bin/python -m pytest -n "$workers" --dist worksteal "$@"
