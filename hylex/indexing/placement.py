"""Where dense search runs in this process, and why: FAISS's GPU code (after a probe in a child process), hylex's
torch Flat search on CUDA, or FAISS on the CPU. Light on purpose: ``hylex stats`` reports the verdict without
importing FAISS (unless a faiss-gpu build is installed, which it must ask), SciPy or Numba."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

from hylex.errors import HylexError

logger = logging.getLogger(__name__)
DEFAULT_FACTORY = "Flat"

GPU_ENV = "HYLEX_FAISS_GPU"
DEVICE_ENV = "HYLEX_DENSE_DEVICE"
TORCH_DTYPE_ENV = "HYLEX_TORCH_FLAT_DTYPE"
# the sparse and BM25 arms: hylex's own inverted-index kernels, compiled with Numba for the CPU
CPU_ARMS = {"sparse": {"device": "cpu", "why": "hylex's block-max kernels (Numba, CPU)"},
            "bm25": {"device": "cpu", "why": "hylex's BM25 kernels (Numba, CPU)"}}

# Run in a child process: a faiss-gpu build without kernels for the visible GPU (the PyPI faiss-gpu-cu12 wheels
# stop at compute capability 8.9, so no Hopper H100/H200) aborts the whole process on its first search, which
# no exception handler can catch.
_PROBE = """
import faiss, numpy as np
x = np.random.default_rng(0).standard_normal((256, 16)).astype("float32")
index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(16))
index.add(x)
D, I = index.search(x[:8], 1)
raise SystemExit(0 if (I[:, 0] == np.arange(8)).all() else 3)
"""
_gpu_probe: dict[tuple, tuple[bool, str]] = {}
_logged: set[tuple[str, str]] = set()


def _probe_gpu() -> tuple[bool, str]:
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    lines = [x for x in (r.stderr or "").splitlines() if x.strip()]
    return r.returncode == 0, (lines[-1] if lines else f"exit status {r.returncode}")


_FAISS_DISTS: list[str] | None = None


def _check_one_faiss() -> list[str]:
    """The installed FAISS distributions; warns once when there are several (they share one ``faiss`` module, so
    whichever was installed last wins, and removing either breaks the other)."""
    global _FAISS_DISTS
    if _FAISS_DISTS is None:
        from importlib import metadata

        found = []
        for name in ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12"):
            try:
                found.append(f"{name} {metadata.version(name)}")
            except metadata.PackageNotFoundError:
                pass
        _FAISS_DISTS = found
        if len(found) > 1:
            logger.warning("%s are installed together and overwrite each other's faiss module: pip uninstall -y "
                           "faiss-cpu faiss-gpu faiss-gpu-cu12, then bash install.sh [--gpu]", " and ".join(found))
    return _FAISS_DISTS


def faiss_gpu_status() -> tuple[bool, str]:
    """``(usable, why)``: whether FAISS can search on a GPU here (faiss-gpu installed, a GPU visible, and a probe
    search on it, run once per process in a child process, succeeds), and the reason in words.

    ``$HYLEX_FAISS_GPU``: ``0`` never uses FAISS's GPU code, ``1`` uses it without the probe, ``auto`` (default)
    probes.
    """
    dists = _check_one_faiss()
    setting = os.environ.get(GPU_ENV, "auto").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return False, f"{GPU_ENV}={setting}"
    gpu_build = any(d.startswith("faiss-gpu") for d in dists)
    if "faiss" not in sys.modules and not gpu_build:  # a CPU build: no need to import FAISS to know
        return False, "FAISS is a CPU build (faiss-cpu)"
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    n = int(get()) if get else 0
    if n == 0:
        return False, "faiss-gpu sees no GPU" if gpu_build else "FAISS is a CPU build (faiss-cpu)"
    if setting in ("1", "on", "true", "yes"):
        return True, f"{GPU_ENV}={setting}: {n} GPU(s), probe skipped"
    key = (faiss.__file__, n)
    if key not in _gpu_probe:
        ok, why = _probe_gpu()
        if not ok:
            logger.warning("faiss-gpu sees %d GPU(s) but cannot search on them (%s): FAISS stays on the CPU (exact "
                           "Flat search moves to the GPU through torch where torch sees one). faiss-gpu 1.15.1 from "
                           "PyPI has kernels for compute capability 7.0-9.0 (`bash install.sh --gpu`); "
                           "faiss-gpu-cu12 stops at 8.9. Set %s=0 to skip this check", n, why, GPU_ENV)
        _gpu_probe[key] = (ok, f"probe search on {n} GPU(s) {'passed' if ok else 'failed: ' + why}")
    return _gpu_probe[key]


def gpu_available() -> bool:
    """True when FAISS can search on a GPU here (:func:`faiss_gpu_status`)."""
    return faiss_gpu_status()[0]


def _nvidia_visible() -> bool:
    """A cheap first check before importing torch's CUDA runtime: an NVIDIA driver and a visible device."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version") or sys.platform == "win32"


def dense_placement() -> dict:
    """Where this process searches dense vectors, and why: ``{"device", "why", "torch_dtype"}``, with device

    - ``faiss-gpu``: FAISS's GPU indexes (Flat, IVF; HNSW stays on the CPU), when :func:`faiss_gpu_status` passes;
    - ``torch:cuda`` (or ``torch:cpu`` when forced): exact Flat indexes searched with torch
      (:class:`~hylex.indexing.torch_flat.TorchFlat`), when FAISS cannot use the GPU and torch can; other index
      types stay on FAISS's CPU code;
    - ``cpu``: FAISS on the CPU.

    ``$HYLEX_DENSE_DEVICE``: ``auto`` (default, the order above), ``cpu`` (never a GPU), ``torch`` (the torch
    Flat search on torch's device: CUDA when visible, else the CPU, which is what the tests run).
    ``$HYLEX_TORCH_FLAT_DTYPE``: the torch search's storage, ``float32`` (default), ``float16`` or ``bfloat16``.
    Cheap after the first call (the probe runs once per process).
    """
    setting = os.environ.get(DEVICE_ENV, "auto").strip().lower()
    dtype = os.environ.get(TORCH_DTYPE_ENV, "float32").strip().lower()
    if setting not in ("auto", "cpu", "torch"):
        raise HylexError(f"{DEVICE_ENV}={setting!r} is unknown: use auto, cpu or torch")
    if setting == "cpu":
        out = {"device": "cpu", "why": f"{DEVICE_ENV}=cpu"}
    elif setting == "torch":
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        out = {"device": f"torch:{dev}", "why": f"{DEVICE_ENV}=torch"}
    else:
        ok, why = faiss_gpu_status()
        if ok:
            out = {"device": "faiss-gpu", "why": why}
        elif not _nvidia_visible():
            out = {"device": "cpu", "why": f"{why}; no NVIDIA GPU visible"}
        else:
            try:
                import torch

                cuda = torch.cuda.is_available()
                torch_why = f"torch {torch.__version__} " + ("sees CUDA" if cuda else "sees no CUDA device")
            except ImportError as e:  # pragma: no cover - torch is a dependency
                cuda, torch_why = False, f"torch: {e}"
            out = {"device": "torch:cuda" if cuda else "cpu", "why": f"{why}; {torch_why}"}
    if out["device"].startswith("torch"):
        from hylex.indexing.torch_flat import STORAGE_DTYPES

        if dtype not in STORAGE_DTYPES:
            raise HylexError(f"{TORCH_DTYPE_ENV}={dtype!r} is unknown: use {', '.join(STORAGE_DTYPES)}")
        out["torch_dtype"] = dtype
    if out["device"] != "cpu" and (out["device"], out["why"]) not in _logged:
        _logged.add((out["device"], out["why"]))
        logger.info("dense search on %s (%s)", out["device"], out["why"])
    return out


def dense_device(factory: str = DEFAULT_FACTORY) -> dict:
    """Where an index built with ``factory`` is searched when loaded in this process, and why:
    ``{"device", "why"}`` (:func:`dense_placement` narrowed to what the index type allows)."""
    where = dense_placement()
    device, why = where["device"], where["why"]
    kind = factory.replace(" ", "")
    if device == "faiss-gpu" and "HNSW" in kind:
        return {"device": "cpu", "why": f"FAISS has no GPU HNSW ({why})"}
    if device.startswith("torch:"):
        if kind != "Flat":
            return {"device": "cpu", "why": f"the torch search covers exact Flat indexes, not {factory} ({why})"}
        return {"device": device, "why": why, "storage": where["torch_dtype"]}
    return {"device": device, "why": why}


def arm_devices(factory: str = DEFAULT_FACTORY) -> dict:
    """Per arm, where an index built with ``factory`` searches in this process and why: ``{"dense", "sparse",
    "bm25"}`` (``devices`` in ``hylex stats`` and the service's ``/stats``)."""
    return {"dense": dense_device(factory), **CPU_ARMS}
