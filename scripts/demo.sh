#!/usr/bin/env bash
# The README's main command: from a fresh clone, train P6b v2.1 on real Wikipedia text in the
# background and watch it live in the TUI. Quitting the TUI (q) leaves the run going:
#   .venv/bin/lvmd status --db demo/lvmd.db     .venv/bin/lvmd stop RUN --db demo/lvmd.db
# (it prints RUN, the new run's id)
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
# A name of its own per demo, so `lvmd status NAME` stays unambiguous (a name=... argument wins).
name="demo-wiki-v2.1-$(date +%Y%m%d-%H%M%S)"
started=$("$lvmd" start lvmd/demo/demo.toml --db "$db" "name=$name" "$@")
# echo, not `tee /dev/stderr`: tee reopens stderr, which truncates a log given as `2>log`
echo "$started" >&2
run=$(sed -n 's/^run \([0-9]*\) .*/\1/p' <<<"$started")
echo "stop it with: $lvmd stop $run --db $db" >&2
if [ -t 0 ] && [ -t 1 ]; then
  exec "$lvmd" tui "$db" --run "$run"
fi
# No terminal (CI, a pipe): show that it trains, then leave it running.
sleep "${LVMD_DEMO_WAIT:-20}"
"$lvmd" status "$run" --db "$db"
