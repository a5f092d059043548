#!/usr/bin/env bash
# The README's main command: from a fresh clone, train P6b v2.1 on real Wikipedia text in the
# background and watch it live in the TUI. Quitting the TUI (q) leaves the run going; it prints
# the run's id and `export LVMD_DB=demo/lvmd.db`, after which `lvmd status RUN`, `lvmd stop RUN`
# and the rest need no --db.
# Extra arguments are config overrides, e.g. scripts/demo.sh train.epochs=3 model.num_layers=2
set -euo pipefail
here=$PWD
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
# every lvmd command takes --db, else $LVMD_DB: naming the demo's file once per shell spares it
shown_db=$db
if [ "$here" != "$PWD" ] && [ "${db#/}" = "$db" ]; then shown_db="$PWD/$db"; fi
echo "run $run trains in the background; in your shell, once:" >&2
echo "  source .venv/bin/activate && export LVMD_DB=$shown_db" >&2
echo "then: lvmd status $run · lvmd pause $run · lvmd resume $run · lvmd stop $run · lvmd tui --run $run" >&2
if [ -t 0 ] && [ -t 1 ]; then
  exec "$lvmd" tui "$db" --run "$run"
fi
# No terminal (CI, a pipe): show that it trains, then leave it running.
sleep "${LVMD_DEMO_WAIT:-20}"
"$lvmd" status "$run" --db "$db"
