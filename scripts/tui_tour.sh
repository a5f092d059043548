#!/usr/bin/env bash
# Drive the real demo through every documented TUI key, in tmux, at 160×48 and at 80×24, and save
# each screen (plain text and with colours) so a person can read what the TUI showed:
#   scripts/tui_tour.sh [OUT]          # default OUT: demo/tour (git-ignored); needs tmux
# It trains two demo runs into OUT/tour.db (scripts/demo.sh, as the README does): a short one,
# finished, as the baseline, and a long one that is live while the keys are pressed (pause,
# resume, eval and checkpoint reach its daemon); at the end it stops the long run and exits.
# Each screen is OUT/<size>/<nn>-<what>.txt (and .ansi: `less -R` shows the colours).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-demo/tour}
lvmd=.venv/bin/lvmd
db=$out/tour.db
session=lvmd-tour-$$
command -v tmux >/dev/null || { echo "tui_tour: needs tmux (apt-get install tmux)" >&2; exit 1; }
mkdir -p "$out"
rm -f "$db" "$db-wal" "$db-shm"
run_long=""

cleanup() {
  tmux kill-session -t "$session" 2>/dev/null || true
  if [ -n "$run_long" ]; then "$lvmd" stop "$run_long" --db "$db" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

start_demo() {  # start_demo OVERRIDES... -> prints the new run's id
  LVMD_DEMO_DB=$db LVMD_DEMO_WAIT=0 scripts/demo.sh "$@" </dev/null 2>&1 >/dev/null | sed -n 's/^run \([0-9]*\) .*/\1/p' | head -1
}

state_of() { "$lvmd" status "$1" --db "$db" --json | .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)['state'])"; }

echo "tour: a short run to be the baseline (2 epochs)..." >&2
run_base=$(start_demo train.epochs=2 name=tour-baseline)
for _ in $(seq 600); do
  case "$(state_of "$run_base")" in finished|stopped|failed|crashed) break ;; esac
  sleep 1
done
echo "tour: the long run, live while the keys are pressed..." >&2
run_long=$(start_demo train.epochs=60 name=tour-live)
for _ in $(seq 300); do  # until it has finished an epoch (replay, gates and epoch charts have data)
  [ "$("$lvmd" status "$run_long" --db "$db" --json | .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)['epoch'])")" -ge 1 ] && break
  sleep 1
done

n=0
missing=0
shot() {  # shot NAME [TEXT]: the screen once TEXT is on it (a loaded machine draws late), else as it is
  n=$((n + 1))
  local name want=${2:-} i
  name=$(printf '%s/%02d-%s' "$dir" "$n" "$1")
  for i in $(seq 40); do
    tmux capture-pane -p -t "$session" > "$name.txt"
    if [ -z "$want" ] || grep -qF -- "$want" "$name.txt"; then break; fi
    sleep 0.5
  done
  tmux capture-pane -p -e -t "$session" > "$name.ansi"
  if [ -n "$want" ] && ! grep -qF -- "$want" "$name.txt"; then
    echo "tour: $name: \"$want\" never showed" >&2
    missing=$((missing + 1))
  fi
  if grep -q "Traceback" "$name.txt"; then echo "tour: a traceback on screen ($name.txt)" >&2; exit 1; fi
}
until_shown() {  # until_shown TEXT: wait (up to 20 s) for TEXT on screen before the next key
  local i
  for i in $(seq 40); do
    tmux capture-pane -p -t "$session" | grep -qF -- "$1" && return 0
    sleep 0.5
  done
  echo "tour: waited in vain for \"$1\"" >&2
  missing=$((missing + 1))
}
until_gone() {  # until_gone TEXT: wait (up to 20 s) for TEXT (a dialog) to leave the screen
  local i
  for i in $(seq 40); do
    tmux capture-pane -p -t "$session" | grep -qF -- "$1" || return 0
    sleep 0.5
  done
}
keys() {  # keys KEY...
  tmux send-keys -t "$session" "$@"
  sleep "${PAUSE:-0.6}"
}
text() {  # text WORDS: typed literally, character by character (as a person types)
  tmux send-keys -t "$session" -l -- "$1"
  sleep "${PAUSE:-0.6}"
}

for size in 160x48 80x24; do
  dir=$out/$size
  rm -rf "$dir" "$out/state.json"
  mkdir -p "$dir"
  n=0
  w=${size%x*}; h=${size#*x}
  tmux new-session -d -s "$session" -x "$w" -y "$h" \
    "LVMD_TUI_STATE=$out/state.json TERM=xterm-256color $lvmd tui --db $db"
  for _ in $(seq 60); do  # until the runs are on screen
    tmux capture-pane -p -t "$session" | grep -q "lvmd ·" && break
    sleep 1
  done
  sleep 1
  shot runs "lvmd ·"                               # newest first: the live run, then the short one
  keys / ; text running; shot runs-filter-running "1 match “running”"
  keys Escape; keys Escape; shot runs-filter-cleared "2 runs · sorted by id"
  keys Down; keys b; shot runs-baseline "baseline: run $run_base"   # the short run is the baseline
  keys g; shot runs-g-not-a-sweep "not a sweep member"
  keys Up; keys m; shot runs-marked "1 marked"; keys m
  keys '?'; shot runs-help "keys · Runs"; keys Escape; until_gone "keys · Runs"
  keys o; shot runs-sorted "sorted by state"; keys O; shot runs-reversed "sorted by state"
  keys /; text tour-live; keys Enter; shot runs-filter-name "1 match “tour-live”"
  keys Enter; shot run-train "run $run_long tour-live"
  keys p; shot run-paused "pause"
  keys r; shot run-resumed "resume"
  keys c; shot run-checkpoint "checkpoint"
  keys e; shot run-eval-5cat "5CAT"
  keys s; shot run-stop-asks "Stop run $run_long"; keys n; until_gone "Stop run $run_long"
  keys '['; shot run-replay-last-epoch "REPLAY"
  keys ']'; keys l; shot run-live
  keys b; shot run-baseline-hidden "hidden"; keys b
  keys z; shot run-zoom-quarter "ZOOM newest 1/4"; keys z z z
  keys m; shot run-metric-picker "chart in the ρ slot"
  text "grad norm"; keys Enter; shot run-grad-norm-charted "grad norm  "
  keys L; shot run-log-scale "log scale"; keys L
  keys x; shot run-x-wall-time "x: wall time"; keys x; shot run-x-epoch "x: epoch"; keys x
  keys S; shot run-smooth-0.6 "~0.6"; keys S S S
  keys Left; shot run-cursor " @"; keys Left Left Right; shot run-cursor-moved " @"; keys Escape
  keys 2; shot run-epochs "gates"; keys ,; shot run-epochs-previous-eval "gates"; keys .
  keys 3; shot run-events "kind "
  keys f; shot run-events-kinds "show events of kind"; text checkpoint; keys Enter
  shot run-events-checkpoints "kind checkpoint"
  keys f; until_shown "show events of kind"; text "all kinds"; keys Enter; sleep 1
  keys /; until_shown "words in kind or detail"; text -attenuate; keys Enter; shot run-events-words "“-attenuate”"; keys Up Up Up; keys End
  shot run-events-end
  keys 4; until_shown "searches the resolved config"; keys /; text rho_cap; shot run-config-search "rho_cap ="
  keys Escape Escape
  keys 5; shot run-system "lvmd daemon"
  keys C-p; shot run-palette "Quit"; keys Escape; sleep 1
  keys '?'; shot run-help "keys · Run"; keys Escape; until_gone "keys · Run"
  keys 1; keys Escape; shot back-to-runs "lvmd ·"
  keys q
  sleep 1
  tmux kill-session -t "$session" 2>/dev/null || true
  echo "tour: $size: $n screens in $dir" >&2
done
"$lvmd" stop "$run_long" --db "$db" >/dev/null && run_long=""
printf '| size | screens | folder |\n|---|---|---|\n'
for size in 160x48 80x24; do
  printf '| %s | %s | %s |\n' "$size" "$(ls "$out/$size"/*.txt | wc -l)" "$out/$size"
done
if [ "$missing" -gt 0 ]; then echo "tour: $missing screens never showed what their key should" >&2; exit 1; fi
