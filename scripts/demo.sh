#!/usr/bin/env bash
# The README's main command: from a fresh clone, train P6b v2.1 on real Wikipedia text in the
# background and watch it live in the TUI. Quitting the TUI (q) leaves the run going:
#   .venv/bin/lvmd status --db demo/lvmd.db     .venv/bin/lvmd stop 1 --db demo/lvmd.db
# Extra arguments are config overrides, e.g. scripts/demo.sh train.epochs=3 model.num_layers=2
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
lvmd=.venv/bin/lvmd
db=${LVMD_DEMO_DB:-demo/lvmd.db}
mkdir -p "$(dirname "$db")"
if [ ! -f lvmd/demo/wiki-minilm/train.npz ]; then
  echo "building sequences from the committed Wikipedia articles (a few seconds)..."
  "$lvmd" data sequences lvmd/demo/wiki-minilm >/dev/null
fi
run=$("$lvmd" start lvmd/demo/demo.toml --db "$db" "$@" | tee /dev/stderr | sed -n 's/^run \([0-9]*\) .*/\1/p')
if [ -t 0 ] && [ -t 1 ]; then
  exec "$lvmd" tui "$db" --run "$run"
fi
# No terminal (CI, a pipe): show that it trains, then leave it running.
sleep 20
"$lvmd" status "$run" --db "$db"
