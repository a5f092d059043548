#!/usr/bin/env bash
# Rebuilds the committed real-text fixture (tests/fixtures/wiki-minilm) and the demo dataset
# (lvmd/demo/wiki-minilm) with `lvmd data build`. Needs the embed extra (pip install 'lvmd[embed]')
# and apt-get (the Austen OOD text comes from Debian's r-cran-janeaustenr). Embeddings are cached
# (~/.cache/lvmd or $LVMD_CACHE), so a second run re-embeds nothing and reproduces the files
# byte for byte; compare with the sha256 in each build.json.
set -euo pipefail
cd "$(dirname "$0")/.."
LVMD=${LVMD:-.venv/bin/lvmd}
what=${1:-fixture}

case "$what" in
  fixture)  # 24 Wikipedia articles x 14 sentences in-domain, 6 Austen chapters OOD: < 1 MB
    "$LVMD" data build --source wikipedia --ood-source austen --embedder minilm --unit sentence \
      --max-docs 24 --max-ood-docs 6 --max-chunks-per-doc 14 --float16 --out tests/fixtures/wiki-minilm
    ;;
  demo)     # every usable Wikipedia article; 24 Austen chapters OOD
    "$LVMD" data build --source wikipedia --ood-source austen --max-ood-docs 24 --embedder minilm \
      --unit sentence --float16 --out lvmd/demo/wiki-minilm
    ;;
  *) echo "usage: $0 [fixture|demo]" >&2; exit 2 ;;
esac
