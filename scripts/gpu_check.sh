#!/usr/bin/env bash
# One pass over lvmd's GPU path on a CUDA machine (about 5 minutes on one H100):
#   1. 5CAT bench, batched on the GPU vs one forward per sample, with the host syncs counted
#      (SPEC's transformer at D=768, then the demo's amn at D=384);
#   2. trainer bench in bf16: lvmd's step vs a bare loop, host syncs per 2 telemetry blocks;
#   3. a real 2-epoch run of the demo config on CUDA under bf16, read back from its SQLite file.
# Usage: scripts/gpu_check.sh [OUT_DIR]   (default gpu-check/; PYTHON=... picks the interpreter,
# which needs lvmd's dependencies: `pip install -e .` or scripts/setup.sh with LVMD_TORCH set).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; \
print('torch', torch.__version__, 'on', torch.cuda.get_device_name(), '| bf16:', torch.cuda.is_bf16_supported())"

"$py" scripts/bench_fivecat.py --device cuda --model transformer --dim 768 | tee "$out/bench_fivecat_transformer.txt"
"$py" scripts/bench_fivecat.py --device cuda --model amn --dim 384 | tee "$out/bench_fivecat_amn.txt"
# the rest writes SQLite through lvmd's store: it needs the full install, not only torch and numpy
"$py" -c "import sqlite_utils, watchfiles" 2>/dev/null || {
  echo "gpu_check: the trainer checks need lvmd's dependencies (sqlite-utils, watchfiles): pip install -e ." >&2
  exit 1; }
"$py" scripts/bench_trainer.py --device cuda --precision bf16 | tee "$out/bench_trainer_bf16.txt"

[ -f lvmd/demo/wiki-minilm/train.npz ] || "$py" -m lvmd data sequences lvmd/demo/wiki-minilm >/dev/null
rm -f "$out/gpu.db"
"$py" -m lvmd run lvmd/demo/demo.toml name=gpu-check train.epochs=2 train.device=cuda --db "$out/gpu.db" \
  | tail -n 4 | tee "$out/run.txt"
"$py" - "$out/gpu.db" <<'PY' | tee -a "$out/run.txt"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
runs = db.execute("SELECT id, state, json_extract(config_json, '$.train.device') FROM runs").fetchall()
steps, lo, hi = db.execute("SELECT count(*), min(step), max(step) FROM steps").fetchone()
evals = db.execute("SELECT count(*) FROM evals").fetchone()[0]
print("runs", runs, "| steps", steps, f"({lo}..{hi})", "| 5CAT evals", evals)
for row in db.execute("SELECT epoch, round(val_cos, 4), round(val_margin, 4), round(duration_s, 1) FROM epochs"):
    print("epoch, val_cos, val_margin, seconds:", row)
PY
