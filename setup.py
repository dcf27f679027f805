"""hylex: hybrid dense + sparse retrieval from one decoder-LLM forward pass (PromptReps)."""
from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "hylex" / "__init__.py").read_text()).group(1)

BASE = [
    # torch is pinned by constraints.txt on the install paths (install.sh); a range here keeps the library
    # usable with other builds (e.g. CUDA wheels on a GPU machine).
    "torch>=2.2",
    "transformers>=4.50",
    "gguf>=0.10",          # GGUF loading (the packaged default model ships as a GGUF)
    "accelerate>=1.0",     # transformers requires it for gguf_file= loading
    "safetensors",
    "scipy>=1.10",
    "numpy>=1.24",
    "numba>=0.59",
    "lmdb>=1.4",
    "PyStemmer>=2.2",     # Snowball stemming of the BM25 arm
    "tqdm",
    "ir-measures>=0.3",
    "pytrec-eval-terrier>=0.5",
    "fastapi>=0.110",      # hylex serve
    "uvicorn>=0.29",
    "swagger-ui-bundle>=1.1",  # /docs without a CDN
    "peft>=0.21,<0.22",    # LoRA for hylex.tuning (imported only when training)
]

setup(
    name="hylex",
    version=VERSION,
    description="Hybrid dense + sparse retrieval from one decoder-LLM forward pass",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["hylex", "hylex.*"]),
    # tuned models shipped with hylex: a LoRA adapter, its card, recipe and training log per folder
    package_data={"hylex": ["models/*/*"]},
    install_requires=BASE,
    extras_require={
        # FAISS, one of two builds that install the same `faiss` module (never both in one environment):
        # hylex[cpu], or hylex[gpu] = Meta's faiss-gpu wheel (CUDA 12 runtime and cuBLAS from nvidia-*-cu12;
        # kernels for compute capability 7.0-9.0). bash install.sh [--gpu] picks one and removes the other.
        "cpu": ["faiss-cpu>=1.8"],
        "gpu": ["faiss-gpu==1.15.1"],
        # corpora as Parquet (what Ray Data writes) and zstd-compressed JSONL; gzip needs nothing
        "formats": ["pyarrow>=14", "zstandard>=0.22"],
        # hylex index --ray / hylex.indexing.distributed
        "ray": ["ray[data]==2.60.0", "pyarrow>=14", "zstandard>=0.22"],
        # bm25s: the reference BM25 of tests/test_bm25.py; pyarrow/zstandard: the corpus formats' tests; ray: a
        # real local cluster for tests/test_ray.py
        "test": ["pytest>=7", "hypothesis>=6", "bm25s>=0.2", "pyarrow>=14", "zstandard>=0.22", "ray[data]==2.60.0"],
        "bench": ["bm25s[core]>=0.2", "matplotlib", "pyseismic-lsr==0.5.4", "qdrant-edge-py==0.9.0", "threadpoolctl",
                  "schemathesis>=4.32,<4.33"],  # benchmarks/fuzz_service.py: the HTTP contract fuzzed
    },
    entry_points={"console_scripts": ["hylex=hylex.cli:main"]},
)
