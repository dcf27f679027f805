"""Dense vectors in FAISS: exact inner product by default, any index-factory string as an option."""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading

import numpy as np

from hylex.errors import HylexError

try:
    import faiss
except ImportError as e:  # FAISS comes from an extra: hylex[cpu] or hylex[gpu]
    raise HylexError(f"FAISS is not installed ({e}): pip install 'hylex[cpu]', or 'hylex[gpu]' on a CUDA machine "
                     f"(bash install.sh [--gpu] does either)") from None
from hylex.kernels.dense import flat_topk

logger = logging.getLogger(__name__)

DEFAULT_FACTORY = "Flat"
# From this many queries in a batch, exact Flat search goes through BLAS: FAISS's own BLAS path without a mask
# (FAISS 1.15 otherwise keeps a scalar loop up to ~128,000 queries: 78 vs 1,140 queries/s for 300 queries over
# 200,000 x 384 here), hylex.kernels.dense.flat_topk with one (FAISS never uses BLAS with an ID selector).
# Below it, FAISS's loop is faster (one query: 29 vs 10 per second).
FLAT_BLAS_MIN_QUERIES = 16
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def _faiss_blas():
    """Make FAISS's exact search use BLAS for this call's batch; the threshold is process-global, so it is
    lowered under a lock and restored after (concurrent batched Flat searches take turns; each uses every core)."""
    with _BLAS_LOCK:
        old = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = min(old, FLAT_BLAS_MIN_QUERIES)
        try:
            yield
        finally:
            faiss.cvar.distance_compute_blas_threshold = old


GPU_ENV = "HYLEX_FAISS_GPU"

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
DEVICE_ENV = "HYLEX_DENSE_DEVICE"
TORCH_DTYPE_ENV = "HYLEX_TORCH_FLAT_DTYPE"
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
    get = getattr(faiss, "get_num_gpus", None)
    n = int(get()) if get else 0
    if n == 0:
        gpu_build = any(d.startswith("faiss-gpu") for d in dists)
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


def to_gpu(index: faiss.Index) -> faiss.Index:
    """The index on every visible GPU when faiss-gpu sees one and supports its type, else the index itself.

    FAISS has GPU versions of Flat, IVF-Flat and IVF-PQ; HNSW (and anything the conversion refuses) stays on
    the CPU. Searching a GPU copy gives the same results as the CPU index (Flat: up to float rounding).
    """
    if dense_placement()["device"] != "faiss-gpu" or "HNSW" in type(index).__name__:
        return index
    try:
        gpu = faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as e:  # a type without a GPU version
        logger.info("FAISS %s stays on the CPU: %s", type(index).__name__, str(e).splitlines()[0] if str(e) else e)
        return index
    logger.info("FAISS %s searches on %d GPU(s)", type(index).__name__, faiss.get_num_gpus())
    return gpu


class DenseIndex:
    """A FAISS index with inner-product metric over L2-normalised vectors (so scores are cosines)."""

    def __init__(self, index: faiss.Index, factory: str = DEFAULT_FACTORY, accel=None):
        self.index = index
        self.factory = factory
        # a TorchFlat copy of an exact index's vectors on the device that searches them (None: FAISS searches)
        self.accel = accel

    @property
    def device(self) -> str:
        """Where searches run: ``faiss-gpu``, ``torch:cuda`` / ``torch:cpu`` or ``cpu``."""
        if self.accel is not None:
            return f"torch:{self.accel.device.type}"
        return "faiss-gpu" if "Gpu" in type(self.index).__name__ else "cpu"

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, factory: str = DEFAULT_FACTORY) -> DenseIndex:
        """Build from float32 (n, d) vectors with ``faiss.index_factory(d, factory, METRIC_INNER_PRODUCT)``."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise HylexError(f"dense vectors must be a 2-D array (n, dim), got shape {x.shape}")
        try:
            index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise HylexError(f"FAISS cannot build index {factory!r}: {str(e).splitlines()[0]}. Use a valid "
                             f"index-factory string such as Flat, HNSW32, IVF256,Flat or IVF256,PQ16") from e
        if not index.is_trained:
            if len(x) == 0:
                raise HylexError(f"FAISS index {factory!r} needs training vectors: index documents first")
            logger.info("training FAISS %s on %d vectors", factory, len(x))
            try:
                index.train(x)
            except RuntimeError as e:
                raise HylexError(f"FAISS cannot train {factory!r} on {len(x)} vectors: {str(e).splitlines()[0]}."
                                 f" Use fewer clusters or Flat") from e
        if len(x):
            index.add(x)
        return cls(index, factory)

    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (D float32 (nq, k), I int64 (nq, k)) with ``I == -1`` for a missing hit.

        ``allowed``: optional bool (ntotal,) mask; only those vectors can be hits (tombstones, filters), applied
        before top-k selection: for an exact CPU Flat index with a batch of at least ``FLAT_BLAS_MIN_QUERIES``
        queries by BLAS (over-fetching through FAISS when most rows are allowed, else
        :func:`~hylex.kernels.dense.flat_topk` over the allowed rows only); otherwise inside FAISS's search (an
        ``IDSelectorBitmap``). Where an approximate index still comes back with fewer than
        ``min(k, allowed.sum())`` hits, those queries are searched exhaustively (IVF with every list probed;
        others on the allowed vectors' stored copies).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        nq = len(q)
        empty = (np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64))
        if self.ntotal == 0:
            return empty
        if self.accel is not None:  # exact, on the device; the mask applied before top-k
            return self.accel.search(q, k, allowed)
        flat = self._flat_vectors() if nq >= FLAT_BLAS_MIN_QUERIES else None
        if allowed is None:
            if flat is not None:
                with _faiss_blas():
                    D, I = self.index.search(q, k)
            else:
                D, I = self.index.search(q, k)
            D[I < 0] = -np.inf
            return D, I
        allowed = np.asarray(allowed, dtype=bool)
        n_ok = int(allowed.sum())
        if n_ok == 0:
            return empty
        if n_ok == self.ntotal:
            return self.search(q, k)
        if flat is not None:
            if n_ok * 2 >= self.ntotal:  # most rows allowed: FAISS's BLAS search, over-fetching past masked hits
                with _faiss_blas():
                    return self._overfetch(q, k, allowed)
            return flat_topk(q, flat, k, allowed)  # few allowed: only their products
        params = _selector_params(self.index, allowed)
        if params is None:  # an index type without selector support (GPU indexes, wrappers): over-fetch
            D, I = self._overfetch(q, k, allowed)
        else:
            D, I = self.index.search(q, k, params=params[0])
        D[I < 0] = -np.inf
        short = np.flatnonzero((I >= 0).sum(1) < min(k, n_ok))
        if len(short):
            D[short], I[short] = self._exhaustive(q[short], k, allowed)
        return D, I

    def _flat_vectors(self) -> np.ndarray | None:
        """A read-only float32 (ntotal, d) view of an exact CPU inner-product index's vectors (None otherwise):
        masked batches go through :func:`hylex.kernels.dense.flat_topk` (BLAS by blocks) with it."""
        index = self.index
        if type(index) is not faiss.IndexFlatIP or self.ntotal == 0:
            return None
        return faiss.rev_swig_ptr(index.get_xb(), self.ntotal * self.dim).reshape(self.ntotal, self.dim)

    def _overfetch(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nq = len(q)
        D_out = np.full((nq, k), -np.inf, np.float32)
        I_out = np.full((nq, k), -1, np.int64)
        todo, kk = np.arange(nq), min(self.ntotal, 4 * k)
        while len(todo):
            D, I = self.index.search(q[todo], kk)
            again = []
            for r, qi in enumerate(todo):
                ok = (I[r] >= 0) & allowed[np.maximum(I[r], 0)]
                if ok.sum() < k and kk < self.ntotal:
                    again.append(qi)
                    continue
                n = min(k, int(ok.sum()))
                D_out[qi, :n], I_out[qi, :n] = D[r][ok][:n], I[r][ok][:n]
            todo, kk = np.asarray(again, dtype=np.int64), min(self.ntotal, kk * 4)
        return D_out, I_out

    def _exhaustive(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.flatnonzero(allowed)
        ivf = _ivf(self.index)
        if ivf is not None:
            params = _selector_params(self.index, allowed, nprobe=ivf.nlist)
            if params is not None:
                D, I = self.index.search(q, k, params=params[0])
                D[I < 0] = -np.inf
                return D, I
        vecs = self.reconstruct(ids)
        if vecs is None:
            return self._overfetch(q, k, allowed)
        scores = q @ vecs.T
        kk = min(k, len(ids))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        D = np.full((len(q), k), -np.inf, np.float32)
        I = np.full((len(q), k), -1, np.int64)
        D[:, :kk] = np.take_along_axis(scores, top, 1)
        I[:, :kk] = ids[top]
        return D, I

    def vectors(self) -> np.ndarray | None:
        """Every stored vector, float32 (ntotal, d), or None where the index type cannot give them back."""
        ivf = _ivf(self.index)
        try:
            if ivf is not None:
                ivf.make_direct_map()
            return self.index.reconstruct_n(0, self.ntotal)
        except RuntimeError:
            return None

    def reconstruct(self, rows: np.ndarray) -> np.ndarray | None:
        """Stored vectors of local ``rows`` (float32 (n, d)), or None where the index type cannot return them."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        ivf = _ivf(self.index)
        try:
            if ivf is not None:
                ivf.make_direct_map()
            return self.index.reconstruct_batch(rows)
        except RuntimeError:
            return None

    def save(self, path: str | os.PathLike) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike, factory: str = DEFAULT_FACTORY, mmap: bool = True) -> DenseIndex:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError:  # not every index type supports mmap: read it into memory instead
            index = faiss.read_index(str(path))
        return cls.placed(index, factory)

    @classmethod
    def placed(cls, index: faiss.Index, factory: str = DEFAULT_FACTORY) -> DenseIndex:
        """``index`` where :func:`dense_placement` says searches run: moved to FAISS's GPUs, its vectors copied to
        torch's device (exact Flat only), or as it is."""
        where = dense_placement()
        if where["device"].startswith("torch:") and type(index) is faiss.IndexFlatIP and index.ntotal:
            from hylex.indexing.torch_flat import TorchFlat

            vectors = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
            return cls(index, factory, TorchFlat(vectors, where["device"].split(":", 1)[1], where["torch_dtype"]))
        return cls(to_gpu(index), factory)


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def _selector_params(index: faiss.Index, allowed: np.ndarray, nprobe: int | None = None):
    """FAISS search parameters restricting hits to ``allowed`` (bool (ntotal,)), or None where the index type
    does not take a selector. Returns ``(params, selector, bitmap)``: params hold raw pointers to the other two,
    which must stay referenced until the search returns."""
    bits = np.packbits(allowed, bitorder="little")  # IDSelectorBitmap reads bit i at byte i >> 3, bit i & 7
    sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    name = type(index).__name__
    if "Gpu" in name:
        return None
    if isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    elif isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe or index.nprobe, max_codes=index.max_codes)
    elif isinstance(index, faiss.IndexFlat):
        params = faiss.SearchParameters(sel=sel)
    else:
        return None
    return params, sel, bits
